"""Capture (read positions, padding, truncated forward), methods, operators and contrast data."""

from __future__ import annotations

import importlib
import json

import pytest
import torch

import steerlab
from steerlab import ChatText, ContrastPair, Steering
from steerlab.extraction.methods import get_method

from .conftest import CAA, PROMPTS, REPE
from .context_fit import caa_items_within_context


def test_left_and_right_padding_read_the_same(lm):
    texts = [*PROMPTS, "Hi"]
    for read in ("last", "mean", 0, (1, 3)):
        left = steerlab.capture(lm, texts, [1, 3], read, padding_side="left")
        right = steerlab.capture(lm, texts, [1, 3], read, padding_side="right")
        for k in (1, 3):
            # float noise: left vs right padding put the real tokens at other rows; measured max |difference|
            # 2.1e-6 (AVX2; 0 with AVX512 and default kernels): >= 21x margin
            torch.testing.assert_close(left[k], right[k], rtol=1e-4, atol=1e-5)


def test_batching_does_not_change_reads(lm):
    one = steerlab.capture(lm, PROMPTS, [2], batch_size=1)
    all_ = steerlab.capture(lm, PROMPTS, [2], batch_size=8)
    # float noise: batches of 1 vs 8 (other matmul shapes); measured max |difference| 1.2e-6 / 1.2e-6 / 1.5e-6
    # (AVX512 / AVX2 / default): >= 15x margin
    torch.testing.assert_close(one[2], all_[2], rtol=1e-4, atol=1e-5)


def test_shared_prefix_gives_the_same_vectors(lm):
    """Persona texts share "Act as if you're extremely" and RepE's openings are prefixes of one
    another: each distinct prefix runs once, and the vector equals the one from running every token."""
    capture_mod = importlib.import_module("steerlab.extraction.capture")
    openings = steerlab.load_openings(REPE / "all_truncated_outputs.json")[:24]
    pairs = steerlab.persona_pairs("happy", "sad", openings)
    shared = steerlab.extract(lm, pairs, layers=[1, 3], batch_size=16)
    full = steerlab.extract(lm, pairs, layers=[1, 3], batch_size=16, share_prefix=False)
    for k in (1, 3):
        # float noise: prefix sharing runs other shapes than full forwards; measured max |difference| <= 2.5e-6
        # (AVX512, AVX2, default kernels): >= 12x margin
        torch.testing.assert_close(shared.directions[k], full.directions[k], rtol=1e-4, atol=1e-5)
    texts = [steerlab.data.pairs.render(s, lm) for p in pairs for s in (p.positive, p.negative)]
    plan = capture_mod.plan_capture(lm, texts, "last", batch_size=16)
    tokens = sum(len(x) for x in lm.tokenizer(texts)["input_ids"])
    assert plan.tree.n_distinct <= plan.n_computed <= 1.1 * plan.tree.n_distinct < tokens / 3


def test_caa_pairs_share_their_question(lm):
    """The two sides of a CAA pair share the whole question: it runs once, same vector."""
    capture_mod = importlib.import_module("steerlab.extraction.capture")
    syc = CAA / "generate" / "sycophancy" / "generate_dataset.json"
    pairs = steerlab.caa_pairs(caa_items_within_context(lm, syc, 8))
    shared = steerlab.extract(lm, pairs, layers=[2, 4], batch_size=8)
    full = steerlab.extract(lm, pairs, layers=[2, 4], batch_size=8, share_prefix=False)
    for k in (2, 4):
        # float noise: prefix sharing runs other shapes than full forwards; measured max |difference| <= 2.5e-6
        # (AVX512, AVX2, default kernels): >= 12x margin
        torch.testing.assert_close(shared.directions[k], full.directions[k], rtol=1e-4, atol=1e-5)
    texts = [steerlab.data.pairs.render(s, lm) for p in pairs for s in (p.positive, p.negative)]
    plan = capture_mod.plan_capture(lm, texts, "answer", batch_size=8)
    questions = sum(len(x) for x in lm.tokenizer(texts[0::2])["input_ids"])
    # each pair's question runs at most once (a short prefix shared *across* pairs may be run again
    # rather than cost a pass of its own: trie.PASS_COST)
    assert plan.tree.n_distinct <= plan.n_computed <= questions + len(pairs)


def test_read_positions_agree_with_hidden_states(lm):
    text = PROMPTS[0]
    ids = lm.tokenizer(text, return_tensors="pt")
    with torch.inference_mode():
        hs = lm.model(**ids, output_hidden_states=True).hidden_states
    # hidden_states[k + 1] is the output of block k (the last one is after the final norm).
    for read, expect in (
        ("last", hs[3][0, -1]),
        (2, hs[3][0, 2]),
        ("mean", hs[3][0].mean(0)),
        ((1, 4), hs[3][0, 1:4].mean(0)),
    ):
        got = steerlab.capture(lm, [text], [2], read)[2][0]
        # float noise: capture's batched passes vs output_hidden_states of one; measured max |difference| <= 1.1e-6
        # (AVX512, AVX2, default): >= 20x margin
        torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-5)
    tokens = steerlab.capture_tokens(lm, text, [2])[2]
    torch.testing.assert_close(tokens, hs[3][0], rtol=1e-4, atol=1e-5)


def test_forward_stops_after_deepest_layer(lm):
    calls: list[str] = []
    handles = [lm.blocks[k].register_forward_hook(lambda *_a, k=k: calls.append(f"b{k}")) for k in range(lm.n_layers)]
    handles.append(lm.model.lm_head.register_forward_hook(lambda *_a: calls.append("head")))
    try:
        steerlab.capture(lm, PROMPTS, [1, 2])
        steerlab.capture(lm, PROMPTS, [1, 2], share_prefix=False)
    finally:
        for h in handles:
            h.remove()
    assert calls and calls == ["b0", "b1", "b2"] * (len(calls) // 3)


def test_answer_letter_read(lm):
    text = "Question?\n (A) yes\n (B) no\nAnswer: (B)"
    enc = lm.tokenizer(text, return_offsets_mapping=True)
    letter = text.rindex("B")
    index = next(i for i, (s, e) in enumerate(enc["offset_mapping"]) if s <= letter < e)
    got = steerlab.capture(lm, [text], [1], "answer")[1][0]
    assert torch.allclose(got, steerlab.capture(lm, [text], [1], index)[1][0])


def test_methods_on_synthetic_data():
    g = torch.Generator().manual_seed(0)
    d = torch.zeros(16)
    d[3] = 4.0
    neg = torch.randn(64, 16, generator=g)
    pos = neg + d + 0.1 * torch.randn(64, 16, generator=g)
    md = get_method("mean_diff").fit(pos, neg)
    torch.testing.assert_close(md, (pos - neg).mean(0))
    for name in ("pca_center", "probe"):
        v = get_method(name).fit(pos, neg)
        assert v[3] > 0 and abs(float(v.norm()) - 4.0) < 0.5, name  # oriented and scaled to the gap
    # pca_diff is PCA of differences *after centring* (as repeng): its sign is still corrected
    v = get_method("pca_diff").fit(pos, neg)
    assert float(((pos - neg) @ v).mean()) >= 0


def test_every_method_extracts_on_a_real_model(lm):
    pairs = steerlab.pairs_from_lists(
        ["I love it so much", "What a joy", "Great day"], ["I hate it so much", "What a pain", "Awful day"]
    )
    for name in ("mean_diff", "pca_diff", "pca_center", "probe"):
        v = steerlab.extract(lm, pairs, method=name, layers=[2, 3])
        assert v.method == name and v.layers == [2, 3] and v.data_hash
        assert all(t.shape == (lm.d_model,) for t in v.directions.values())


def test_actadd_pads_with_spaces_and_is_front_aligned(lm):
    pair = ContrastPair("Love", "Hate because")
    v = steerlab.extract(lm, [pair], method="actadd", layers=[1])
    n = len(lm.tokenizer("Hate because")["input_ids"])
    assert v.directions[1].shape == (n, lm.d_model) and v.meta["n_tokens"] == n
    # the BOS row (identical in both prompts) is zero
    assert torch.allclose(v.directions[1][0], torch.zeros(lm.d_model), atol=1e-5)


def test_operators_act_on_the_projection(lm, vec):
    layer, u = 2, vec.directions[2] / vec.directions[2].norm()
    base = steerlab.capture(lm, PROMPTS, [layer], "mean")[layer]
    with steerlab.steer(lm, Steering(vec, 1.0, layers=[layer], operator="ablate")):
        abl = steerlab.capture(lm, PROMPTS, [layer], "last")[layer]
    assert torch.allclose(abl @ u, torch.zeros(len(PROMPTS)), atol=1e-4)
    with steerlab.steer(lm, Steering(vec, 2.5, layers=[layer], operator="clamp")):
        cl = steerlab.capture(lm, PROMPTS, [layer], "last")[layer]
    assert torch.allclose(cl @ u, torch.full((len(PROMPTS),), 2.5), atol=1e-4)
    plain = steerlab.capture(lm, PROMPTS, [layer], "last")[layer]
    with steerlab.steer(lm, Steering(vec, 3.0, layers=[layer], operator="add_norm_preserving")):
        npres = steerlab.capture(lm, PROMPTS, [layer], "last")[layer]
    torch.testing.assert_close(npres.norm(dim=-1), plain.norm(dim=-1), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(npres, plain)
    with steerlab.steer(lm, Steering(vec, 3.0, layers=[layer])):
        added = steerlab.capture(lm, PROMPTS, [layer], "last")[layer]
    torch.testing.assert_close(added, plain + 3.0 * vec.directions[layer], rtol=1e-4, atol=1e-4)
    assert base.shape == (len(PROMPTS), lm.d_model)


def test_composed_steerings_add_up(lm, vec):
    plain = steerlab.capture(lm, PROMPTS, [1], "last")[1]
    with steerlab.steer(lm, Steering(vec, 1.0, layers=[1]) + Steering(vec, 2.0, layers=[1])):
        both = steerlab.capture(lm, PROMPTS, [1], "last")[1]
    torch.testing.assert_close(both, plain + 3.0 * vec.directions[1], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- data
def test_persona_pairs_use_chat_template_when_present(lm):
    pairs = steerlab.persona_pairs("happy", "sad", ["That game", "", "I can see"])
    assert len(pairs) == 2 and pairs[0].positive == ChatText("Act as if you're extremely happy.", "That game")
    assert steerlab.data.pairs.render(pairs[0].positive, lm) == "Act as if you're extremely happy.\nThat game"
    assert steerlab.data.ab.choice_letters("Will (AGI) help?\n (A) yes\n (B) no") == ["A", "B"]

    class Chatty:
        has_chat_template = True

        def chat(self, user, assistant="", system=None):
            return f"<u>{user}</u><a>{assistant}"

    assert (
        steerlab.data.pairs.render(pairs[0].negative, Chatty()) == "<u>Act as if you're extremely sad.</u><a>That game"
    )


def test_load_pairs_formats(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps([{"positive": "a", "negative": "b"}]))
    (tmp_path / "p.jsonl").write_text('{"positive": "a", "negative": "b", "read": "mean"}\n\n')
    (tmp_path / "p.csv").write_text("positive,negative\na,b\n")
    assert steerlab.load_pairs(tmp_path / "p.json")[0] == ContrastPair("a", "b")
    assert steerlab.load_pairs(tmp_path / "p.jsonl")[0].read == "mean"
    assert steerlab.load_pairs(tmp_path / "p.csv")[0].negative == "b"


def test_caa_items_from_shared_data():
    items = steerlab.load_caa(CAA / "generate" / "sycophancy" / "generate_dataset.json", limit=5)
    pairs = steerlab.caa_pairs(items)
    assert len(pairs) == 5 and pairs[0].read == "answer"
    assert pairs[0].positive.assistant in ("(A)", "(B)") and pairs[0].positive.assistant != pairs[0].negative.assistant
    refusal = steerlab.caa_pairs(steerlab.load_caa(CAA / "generate" / "refusal" / "generate_dataset.json", limit=3))
    assert all(p.positive.assistant.startswith("(") for p in refusal)


def test_openings_from_shared_data():
    openings = steerlab.load_openings(REPE / "all_truncated_outputs.json")
    assert len(openings) == 581 and openings[0] == "That game"


def test_caa_vector_on_real_model(lm):
    items = steerlab.load_caa(CAA / "generate" / "myopic-reward" / "generate_dataset.json", limit=6)  # fit 512 tokens
    v = steerlab.extract(lm, steerlab.caa_pairs(items), layers=[2])
    assert v.meta["read"] == "'answer'" and torch.isfinite(v.directions[2]).all()


@pytest.mark.parametrize("name", ["mean_diff", "pca_center"])
def test_registry_has_docs(name):
    assert get_method(name).summary


def test_output_hidden_states_see_the_steered_stream(lm, vec):
    ids = lm.tokenizer("The cat", return_tensors="pt")
    with torch.inference_mode():
        plain = lm.model(**ids, output_hidden_states=True).hidden_states[3]
        with steerlab.steer(lm, Steering(vec, 2.0, layers=[2])):
            steered = lm.model(**ids, output_hidden_states=True).hidden_states[3]
    torch.testing.assert_close(steered, plain + 2.0 * vec.directions[2], rtol=1e-4, atol=1e-4)


def test_composition_keeps_order_around_non_add_operators(lm, vec):
    """add, then ablate, then add again: the second addition survives the ablation."""
    layer, u = 1, vec.directions[1] / vec.directions[1].norm()
    s = Steering(vec, 2.0, layers=[layer]) + Steering(vec, 1.0, layers=[layer], operator="ablate")
    s = s + Steering(vec, 3.0, layers=[layer])
    with steerlab.steer(lm, s):
        got = steerlab.capture(lm, PROMPTS, [layer], "last")[layer]
    expected = float(3.0 * vec.directions[layer] @ u)
    torch.testing.assert_close(got @ u, torch.full((len(PROMPTS),), expected), rtol=1e-4, atol=1e-4)
