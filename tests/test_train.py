"""Trained steering vectors (``bipo``, ``reps``) and preference data, on stories260K (real weights).

The target a trained vector must beat mean_diff on: the **steering margin** on held-out pairs —
how much more ``+v`` prefers the chosen completion over the rejected one than ``−v`` does — with
both vectors rescaled to the same norm per layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import steerlab
from steerlab import ChatText, ContrastPair, Steering, SteeringVector
from steerlab.data.preference import PreferencePair, contrast_pairs, load_preferences, preference_pairs, self_contrast
from steerlab.errors import DatasetError, SteeringError
from steerlab.extraction.train import TrainConfig, TrainingError, preference_margin, train_vector
from steerlab.extraction.train.encode import encode_pairs
from steerlab.extraction.train.forward import Row, completion_logps, fluency_kl, pair_rows
from steerlab.extraction.train.loop import live_vector
from steerlab.extraction.train.objectives import OBJECTIVES, Scores
from steerlab.runtime.hf import block_hidden

from .conftest import CAA, param_hash
from .test_bake import assert_same_logits, load_plain

NAMES = ["Lily", "Tom", "Sue", "Ben", "Mia", "Max", "Anna", "Sam", "Lucy", "Tim", "Zoe", "Jack"]
GOOD = [
    " was happy. She smiled and laughed.",
    " felt very glad and loved the sun.",
    " was so happy and said thank you.",
]
BAD = [" was sad. She cried and cried.", " felt very bad and hated the rain.", " was so angry and said go away."]
PAIRS = [PreferencePair(n, g, b) for n in NAMES for g, b in zip(GOOD, BAD)]
TRAIN, HELD = PAIRS[:24], PAIRS[24:]  # held-out pairs: names the vector never saw
FAST = {"lr": 0.05, "epochs": 3, "batch_size": 8, "holdout": 0.25, "progress": False}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bipo(lm: steerlab.LM) -> SteeringVector:
    return steerlab.extract(lm, TRAIN, method="bipo", layers=[2], **{**FAST, "epochs": 8})


def _equal_norm(vec: SteeringVector, like: SteeringVector) -> SteeringVector:
    norms = like.norms()
    return SteeringVector(
        {k: v * (norms[k] / float(v.norm())) for k, v in vec.directions.items()},
        vec.model_id, vec.d_model, vec.n_layers, vec.method,
    )  # fmt: skip


# ----------------------------------------------------------------------------- the target
def test_bipo_beats_mean_diff_on_heldout_pairs(lm: steerlab.LM, bipo: SteeringVector) -> None:
    md = steerlab.extract(lm, contrast_pairs(TRAIN), method="mean_diff", layers=[2])
    got = preference_margin(lm, bipo, HELD, coefficient=1.0)
    base = preference_margin(lm, _equal_norm(md, bipo), HELD, coefficient=1.0)
    assert got.win_rate >= base.win_rate and got.win_rate == 1.0
    assert got.mean > 1.5 * base.mean > 0, (got.mean, base.mean)
    # and the trained vector's held-out loss fell during training
    assert bipo.meta["heldout_loss"][bipo.meta["best_epoch"]] < bipo.meta["heldout_loss"][0]


def test_reps_learns_the_preference(lm: steerlab.LM) -> None:
    vec = steerlab.extract(lm, TRAIN, method="reps", layers=[2], factors=(0.5, 1.0, 2.0), **FAST)
    m = preference_margin(lm, vec, HELD)
    assert m.win_rate == 1.0 and m.mean > 0
    assert vec.method == "reps" and vec.meta["factors"] == [0.5, 1.0, 2.0] and vec.meta["beta"] == 1.0


@pytest.mark.parametrize("side", ["positive", "negative"])
def test_reps_trains_one_side(lm: steerlab.LM, side: str) -> None:
    """A vector per direction: trained on one side only, it moves the preference that way (and its
    held-out numbers are measured on that side)."""
    vec = steerlab.extract(lm, TRAIN, method="reps", layers=[2], directions=side, **FAST)
    assert vec.meta["directions"] == side and len(vec.meta["heldout_loss"]) >= 1
    m = preference_margin(lm, vec, HELD)  # +v prefers the chosen completion more than −v does
    assert m.mean > 0 and m.win_rate >= 0.75, (m.mean, m.win_rate)


def test_metadata_records_the_objective_and_settings(bipo: SteeringVector) -> None:
    meta = bipo.meta
    assert bipo.method == "bipo" and meta["objective"] == "bipo"
    for key, want in {"lr": 0.05, "epochs": 8, "beta": 0.1, "fluency_weight": 0.0, "seed": 0, "layers": [2],
                      "positions": "generated", "directions": "sample", "n_train": 18, "n_heldout": 6,
                      }.items():  # fmt: skip
        assert meta[key] == want, key
    assert len(meta["train_loss"]) == meta["epochs_run"] == len(meta["heldout_loss"])
    assert meta["inference"] == "Steering(vec, ±c, positions='generated')"


# ----------------------------------------------------------------------------- mechanics
def test_model_stays_frozen_and_unchanged(lm: steerlab.LM) -> None:
    before = param_hash(lm)
    flags = [p.requires_grad for p in lm.model.parameters()]
    seen: list[bool] = []

    def spy(_: dict[str, Any]) -> None:
        seen.append(any(p.requires_grad or p.grad is not None for p in lm.model.parameters()))

    steerlab.extract(lm, TRAIN, method="bipo", layers=[1, 3], on_step=spy, **{**FAST, "epochs": 1})
    assert seen and not any(seen), "a model parameter required or received a gradient during training"
    assert param_hash(lm) == before
    assert [p.requires_grad for p in lm.model.parameters()] == flags


def test_autograd_records_nothing_before_the_first_steered_layer(lm: steerlab.LM) -> None:
    seen: dict[int, list[bool]] = {0: [], 1: [], 2: [], 3: []}

    def watch(layer: int) -> Any:
        return lambda _m, _a, out: seen[layer].append(block_hidden(out).requires_grad)

    handles = [lm.blocks[k].register_forward_hook(watch(k)) for k in seen]
    try:
        steerlab.extract(lm, TRAIN[:8], method="bipo", layers=[2], **{**FAST, "epochs": 1, "holdout": 0.0})
    finally:
        for h in handles:
            h.remove()
    assert seen[0] and not any(seen[0] + seen[1]), "blocks before the steered layer were recorded by autograd"
    assert any(seen[2]) and any(seen[3])


@pytest.mark.parametrize("positions", ["generated", "all"])
def test_shared_prompts_give_the_same_scores_and_gradients(lm: steerlab.LM, positions: str) -> None:
    pairs = encode_pairs(lm, [PreferencePair("Once upon a time, there was a girl named Lily. She", g, b)
                              for g, b in zip(GOOD, BAD)])  # fmt: skip
    torch.manual_seed(0)
    results = []
    for share in (True, False):
        torch.manual_seed(0)
        params = {k: (0.5 * torch.randn(lm.d_model)).requires_grad_() for k in (1, 3)}
        prompts, rows, ps = pair_rows(pairs, [(1.0, -1.0)] * len(pairs), live_vector(lm, params), positions)
        lp = completion_logps(lm, prompts, rows, ps, share_prefix=share)
        lp.sum().backward()
        results.append((lp.detach(), {k: p.grad for k, p in params.items()}))
    (a, ga), (b, gb) = results
    # float noise: shared prompts run from caches vs whole; measured max |difference| of the log-probs
    # 1.9e-5 / 2.3e-5 / 3.1e-5 and of the gradients 3.8e-5 / 3.1e-5 / 4.6e-5 (AVX512 / AVX2 / default): >= 6x
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    for k in ga:
        torch.testing.assert_close(ga[k], gb[k], rtol=1e-3, atol=1e-4)
        assert ga[k] is not None and float(ga[k].norm()) > 0


def test_training_positions_match_steered_generation(lm: steerlab.LM, bipo: SteeringVector) -> None:
    """The log-probability training computes for a completion under ``positions="generated"`` is
    the one the model has when it *generates* that completion under
    ``Steering(vec, c, positions="generated")``."""
    from steerlab.runtime.generate import encode
    from steerlab.runtime.session import steer_rows

    steering = Steering(bipo, 2.0, positions="generated")
    prompt = "Lily went to the park and"
    ids, mask = encode(lm, [prompt])
    with steer_rows(lm, [steering], prompt_length=mask.sum(-1)), torch.inference_mode():
        out = lm.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False,
                                output_logits=True, return_dict_in_generate=True, pad_token_id=0)  # fmt: skip
    new = out.sequences[0, ids.shape[1] :]
    want = sum(float(torch.log_softmax(step[0].float(), -1)[t]) for step, t in zip(out.logits, new))
    with torch.inference_mode():
        got = completion_logps(lm, [tuple(ids[0].tolist())], [Row(0, tuple(new.tolist()), steering)])
    assert abs(float(got[0]) - want) < 1e-3, (float(got[0]), want)
    with torch.inference_mode():
        unsteered = completion_logps(lm, [tuple(ids[0].tolist())], [Row(0, tuple(new.tolist()), None)])
    assert abs(float(unsteered[0]) - want) > 0.1, "the steering did nothing to the scored completion"


def test_fluency_kl_is_zero_unsteered_and_positive_steered(lm: steerlab.LM, bipo: SteeringVector) -> None:
    texts = [tuple(lm.tokenizer(t)["input_ids"]) for t in ("The cat sat on the mat.", "Tom had a red ball.")]
    zero = SteeringVector({2: torch.zeros(lm.d_model)}, lm.model_id, lm.d_model, lm.n_layers)
    assert fluency_kl(lm, texts, [Steering(zero, 1.0), Steering(zero, 1.0)]).abs().max() < 1e-5
    kl = fluency_kl(lm, texts, [Steering(bipo, 3.0), Steering(bipo, -3.0)])
    assert (kl > 1e-3).all()


def test_fluency_weight_keeps_the_vector_closer_to_the_model(lm: steerlab.LM) -> None:
    texts = ["The sun was up and the birds sang.", "Tom and Sue went to the shop.", "A big dog ran in the park."]
    plain = steerlab.extract(lm, TRAIN, method="bipo", layers=[2], **FAST)
    fluent = steerlab.extract(lm, TRAIN, method="bipo", layers=[2], fluency_weight=50.0, fluency_texts=texts, **FAST)
    assert fluent.meta["fluency_weight"] == 50.0
    ids = [tuple(lm.tokenizer(t)["input_ids"]) for t in texts]
    with torch.inference_mode():
        kl_plain = fluency_kl(lm, ids, [Steering(plain, 1.0, positions="all")] * 3).mean()
        kl_fluent = fluency_kl(lm, ids, [Steering(fluent, 1.0, positions="all")] * 3).mean()
    assert kl_fluent < kl_plain


def test_resumed_training_equals_uninterrupted(lm: steerlab.LM, tmp_path: Path) -> None:
    opts: dict[str, Any] = {**FAST, "epochs": 3, "batch_size": 6, "layers": [1, 3], "factors": (0.5, 1.0)}
    whole = steerlab.extract(lm, TRAIN, method="bipo", **opts)
    ckpt = tmp_path / "train.ckpt"

    def interrupt(info: dict[str, Any]) -> None:
        if info["step"] == 3:  # mid-epoch 1 (2 steps per epoch)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        steerlab.extract(lm, TRAIN, method="bipo", checkpoint=ckpt, on_step=interrupt, **opts)
    assert ckpt.is_file()
    resumed = steerlab.extract(lm, TRAIN, method="bipo", checkpoint=ckpt, **opts)
    assert not ckpt.exists()
    for k in whole.layers:
        assert torch.equal(whole.directions[k], resumed.directions[k])
    for key in ("train_loss", "heldout_loss", "train_accuracy", "best_epoch", "steps"):
        assert whole.meta[key] == resumed.meta[key], key
    # a checkpoint of another run is refused
    with pytest.raises(KeyboardInterrupt):
        steerlab.extract(lm, TRAIN, method="bipo", checkpoint=ckpt, on_step=interrupt, **opts)
    with pytest.raises(DatasetError, match="another training run"):
        steerlab.extract(lm, TRAIN, method="bipo", checkpoint=ckpt, **{**opts, "lr": 0.01})


def test_bipo_vector_round_trips_save_gguf_and_bake(lm: steerlab.LM, tmp_path: Path) -> None:
    vec = steerlab.extract(lm, TRAIN, method="bipo", layers=[1, 3], positions="all", **FAST)
    assert vec.meta["positions"] == "all"
    loaded = SteeringVector.load(vec.save(tmp_path / "vec"))
    assert loaded.method == "bipo" and loaded.meta == vec.meta
    gguf = SteeringVector.from_gguf(vec.to_gguf(tmp_path / "vec.gguf"), lm=lm)
    for k in vec.layers:
        assert torch.equal(loaded.directions[k], vec.directions[k])
        assert torch.equal(gguf.directions[k], vec.directions[k])
    steering = Steering(vec, 2.0, positions="all")
    baked = load_plain(steerlab.bake(lm, steering, tmp_path / "baked"))
    assert_same_logits(baked, lm, steerlab.steer(lm, steering))


# ----------------------------------------------------------------------------- preference data
def test_self_contrast_makes_pairs_from_one_batched_generation(lm: steerlab.LM, monkeypatch: Any) -> None:
    openings = ["Once upon a time", "The little dog", "Tom and Sue"]
    positive, negative = "The sun was bright and everyone laughed.", "The rain fell and the boy cried."
    calls: list[int] = []
    real = lm.model.generate

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(int(kwargs["input_ids"].shape[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(lm.model, "generate", counting)
    pairs = self_contrast(lm, openings, positive, negative, max_new_tokens=12)
    assert calls == [6], "every opening under both prompts in one generate call"
    monkeypatch.undo()
    want = []
    for o in openings:  # the same continuations one at a time, under each prompt
        pos = steerlab.generate(lm, [ChatText(positive, o).render(lm)], max_new_tokens=12)[0]
        neg = steerlab.generate(lm, [ChatText(negative, o).render(lm)], max_new_tokens=12)[0]
        if pos != neg:  # an opening continued the same way under both prompts says nothing
            want.append(PreferencePair(o, pos, neg))
    assert pairs == want and 1 <= len(pairs) < len(openings)


def test_preference_pairs_from_caa_contrast_pairs_and_files(lm: steerlab.LM, tmp_path: Path) -> None:
    items = steerlab.load_caa(CAA / "generate" / "refusal" / "generate_dataset.json", limit=3)
    from_items = preference_pairs(items)
    from_pairs = preference_pairs(steerlab.caa_pairs(items))
    assert from_items == from_pairs
    p = from_items[0]
    assert isinstance(p.prompt, ChatText) and p.prompt.user == items[0]["question"]
    assert p.chosen.startswith("(") and p.chosen != p.rejected
    enc = encode_pairs(lm, from_items)[0]
    full = lm.tokenizer(ChatText(p.prompt.user, p.chosen).render(lm))["input_ids"]
    assert list(enc.prompt + enc.chosen) == full
    # plain-string contrast pairs: the shared leading tokens are the prompt
    enc = encode_pairs(lm, preference_pairs([ContrastPair("The dog was very happy", "The dog was very sad")]))[0]
    assert lm.tokenizer.decode(enc.prompt, skip_special_tokens=True) == "The dog was very"
    # files
    f = tmp_path / "prefs.jsonl"
    f.write_text('{"prompt": "Lily", "chosen": " smiled.", "rejected": " cried."}\n' + "\n")
    assert load_preferences(f) == [PreferencePair("Lily", " smiled.", " cried.")]
    vec = steerlab.extract(lm, from_items, method="bipo", layers=[2], epochs=1, holdout=0.0, progress=False)
    assert vec.meta["n_pairs"] == 3 and vec.meta["heldout_loss"] == []


# ----------------------------------------------------------------------------- objectives
def test_objectives_follow_their_formulas() -> None:
    t, logsig = torch.tensor, torch.nn.functional.logsigmoid
    # one pair: log p(w), log p(l) under +v = (-2, -5), under −v = (-6, -3); unsteered (-4, -4.5); lengths 2, 3
    s = Scores(t([1.0, -1.0]), t([-2.0, -6.0]), t([-5.0, -3.0]), t([-4.0] * 2), t([-4.5] * 2), t([2.0] * 2),
               t([3.0] * 2))  # fmt: skip
    m_pos, m_neg = (-2 + 4) - (-5 + 4.5), (-6 + 4) - (-3 + 4.5)
    torch.testing.assert_close(OBJECTIVES["bipo"].loss(s, 0.1), -logsig(t([0.1 * m_pos, -0.1 * m_neg])))
    b_pos, b_neg = max(-4.5 + 4, 1.0), max(-4 + 4.5, 1.0)
    d_pos, d_neg = b_pos * -2 / 2 - (-5 / 3), b_neg * -3 / 3 - (-6 / 2)
    torch.testing.assert_close(OBJECTIVES["reps"].loss(s, 1.0), -logsig(t([d_pos, d_neg])))
    assert s.accuracy().tolist() == [1.0, 1.0]


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "options",
    [{"lr": 0.0}, {"lr": float("nan")}, {"epochs": 0}, {"beta": -1.0}, {"holdout": 1.0}, {"patience": 0},
     {"batch_size": 0}, {"fluency_weight": -0.5}, {"positions": "prompt"}, {"factors": ()}, {"factors": (0.0,)},
     {"seed": 1.5}, {"directions": "one"}, {"learning_rate": 0.1}],
)  # fmt: skip
def test_bad_settings_raise(lm: steerlab.LM, options: dict[str, Any]) -> None:
    with pytest.raises(TrainingError) as err:
        steerlab.extract(lm, TRAIN, method="bipo", layers=[2], progress=False, **options)
    assert isinstance(err.value, SteeringError)


def test_bad_data_raises(lm: steerlab.LM) -> None:
    with pytest.raises(DatasetError, match="no preference pairs"):
        steerlab.extract(lm, [], method="bipo", layers=[2])
    with pytest.raises(DatasetError, match="self_contrast"):
        steerlab.extract(lm, steerlab.persona_pairs("happy", "sad", ["Lily"]), method="reps", layers=[2])
    with pytest.raises(DatasetError, match="same chosen and rejected"):
        PreferencePair("Lily", " ran.", " ran.")
    with pytest.raises(DatasetError, match="empty"):
        PreferencePair("Lily", " ", " ran.")
    with pytest.raises(DatasetError, match="prefix"):
        encode_pairs(lm, preference_pairs([ContrastPair("The dog was", "The dog was very sad")]))
    with pytest.raises(DatasetError, match="only apply to trained methods"):
        steerlab.extract(lm, steerlab.pairs_from_lists(["a b"], ["a c"]), method="mean_diff", layers=[2], lr=0.1)
    with pytest.raises(DatasetError, match="fluency"):
        steerlab.extract(lm, TRAIN, method="bipo", layers=[2], fluency_weight=1.0, fluency_texts=[""])
    with pytest.raises(DatasetError, match="same continuation"):
        self_contrast(lm, ["Once upon a time"], "Lily.", "Lily.", max_new_tokens=4)
    with pytest.raises(SteeringError):
        preference_margin(lm, SteeringVector({2: torch.ones(lm.d_model)}, lm.model_id, lm.d_model, lm.n_layers),
                          HELD, coefficient=0.0)  # fmt: skip


def test_train_vector_direct_call_defaults(lm: steerlab.LM) -> None:
    vec = train_vector(lm, TRAIN[:6], "reps", [2], TrainConfig(epochs=1, holdout=0.0), progress=False)
    assert vec.meta["objective"] == "reps" and vec.meta["epochs_run"] == 1 and vec.layers == [2]
    with pytest.raises(TrainingError, match="unknown objective"):
        train_vector(lm, TRAIN, "dpo", [2])
