"""The runtime's passes and measures (steerlab.runtime.passes, steerlab.runtime.score) against direct
computations: a pass stopped after block k, new tokens after a shared prefix, and the log-likelihood
and KL that capture, training and evaluation all take from them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import steerlab
from steerlab import Steering
from steerlab.evaluate.likelihood import continuation_ids, continuation_nll
from steerlab.extraction.train.forward import Row, completion_logps, fluency_kl
from steerlab.models.tokens import pad_id, pad_token_ids, position_ids
from steerlab.runtime import hf
from steerlab.runtime.generate import encode
from steerlab.runtime.passes import Prefix, extend, forward, run_until
from steerlab.runtime.score import kl, predicting, row_sums, score, spans, target_logps

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXTS = ["Once upon a time, there was a little girl named Lily.", "The dog ran.", "Tom had a red ball."]


def test_run_until_stops_after_block_k_and_fills_its_cache(lm: steerlab.LM) -> None:
    before = [list(b._forward_hooks) for b in lm.blocks]  # transformers may keep hooks of its own there
    ran: list[int] = []
    handles = [b.register_forward_hook(lambda m, a, o, k=k: ran.append(k)) for k, b in enumerate(lm.blocks)]
    seen: dict[str, torch.Tensor] = {}
    cache = hf.new_cache(lm.model)
    ids, mask = encode(lm, TEXTS[:2], "right")
    try:
        with torch.inference_mode():
            run_until(lm, 2, ids, mask, hooks={2: lambda m, a, out: seen.update(h=hf.block_hidden(out))}, cache=cache)
    finally:
        for h in handles:
            h.remove()
    assert ran == [0, 1, 2]
    assert seen["h"].shape == (2, ids.shape[1], lm.d_model)
    assert hf.cache_length(cache) == ids.shape[1] and len(cache.layers) >= 3
    assert [list(b._forward_hooks) for b in lm.blocks] == before  # the stop and the reading hooks are gone
    with torch.inference_mode():
        full = forward(lm, ids, mask, output_hidden_states=True)
    assert torch.equal(seen["h"], full.hidden_states[3])  # exact: the same ops up to block 2


def test_new_tokens_after_a_prefix_equal_the_whole_forward(lm: steerlab.LM) -> None:
    """Two prompts run once, each continued by two rows (one takes the cache over, one copies it):
    the continuation's logits equal the whole texts' forward (float noise)."""
    heads = [[1, 5, 6, 7, 8], [1, 9]]
    tails = [[10, 11], [12], [13, 14, 15], [16]]
    owner = [0, 0, 1, 1]
    pad = pad_id(lm.tokenizer)
    with torch.inference_mode():
        ids, mask = pad_token_ids(heads, pad, "left")
        _, prefix = extend(lm, ids, mask, keep=True)
        assert prefix.cache is not None and prefix.width == 5
        copy = prefix.rows(torch.tensor(owner))
        assert prefix.cache is not None  # rows() without take leaves the prefix as it was
        taken = prefix.rows(torch.tensor(owner), take=True)
        assert prefix.cache is None and taken.cache is not None
        t_ids, t_mask = pad_token_ids(tails, pad, "right")
        for rows in (copy, taken):
            out, after = extend(lm, t_ids, t_mask, rows)
            assert after.cache is None and after.width == 5 + t_ids.shape[1]
            whole_ids, whole_mask = pad_token_ids([heads[o] + t for o, t in zip(owner, tails)], pad, "right")
            whole = forward(lm, whole_ids, whole_mask, position_ids=position_ids(whole_mask)).logits
            for r, (o, t) in enumerate(zip(owner, tails)):
                # float noise: cached prefix vs one forward; measured max |difference| 1e-6 (stories260K)
                got, want = out.logits[r, : len(t)], whole[r, len(heads[o]) : len(heads[o]) + len(t)]
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_prefix_rows_select_the_mask() -> None:
    p = Prefix(None, torch.tensor([[0, 1, 1], [1, 1, 1]]))
    assert p.rows(torch.tensor([1, 0, 1])).mask.tolist() == [[1, 1, 1], [0, 1, 1], [1, 1, 1]]


def test_continuation_nll_equals_the_direct_sum(lm: steerlab.LM, vec: steerlab.SteeringVector) -> None:
    prompts, conts = ["Once upon", "The dog", ""], [" a time there", " ran to the park", " Tom had a ball."]
    for steering in (None, Steering(vec, 2.0)):
        want = []
        for p, c in zip(prompts, conts):  # one text at a time, as the log-softmax of every position
            full, start = continuation_ids(lm, p, c)
            ids = torch.tensor([full])
            with torch.inference_mode(), steerlab.steer(lm, steering):
                logits = lm.model(input_ids=ids).logits[0].float()
            logp = torch.log_softmax(logits[:-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
            want.append(float(-logp[start - 1 :].sum()))
        with steerlab.steer(lm, steering):
            got = continuation_nll(lm, prompts, conts, batch_size=2)
        # float noise: batched and padded, the sum runs over each padded row (zeros outside the
        # continuation); measured max relative difference 1.1e-7 on the default model, 0 on stories260K
        assert [n for _, n in got] == [len(continuation_ids(lm, p, c)[0]) - continuation_ids(lm, p, c)[1]
                                      for p, c in zip(prompts, conts)]  # fmt: skip
        assert [x for x, _ in got] == pytest.approx(want, rel=1e-5)


def test_completion_logps_equal_the_cross_entropy(lm: steerlab.LM, vec: steerlab.SteeringVector) -> None:
    """Exact: the same log-softmax values, summed over the same padded rows as cross-entropy's."""
    prompts = [tuple(lm.tokenizer("Lily went to the park and")["input_ids"]), (1, 5)]
    rows = [Row(0, (300, 301, 302), Steering(vec, 2.0, positions="generated")), Row(1, (40,), None)]
    seqs = [prompts[r.prompt] + r.completion[:-1] for r in rows]
    ids, mask = pad_token_ids(seqs, pad_id(lm.tokenizer), "right")
    targets = torch.full_like(ids, -100)
    for i, r in enumerate(rows):
        start = len(prompts[r.prompt]) - 1
        targets[i, start : start + len(r.completion)] = torch.tensor(r.completion)
    with torch.inference_mode():
        with steerlab.steer_rows(lm, [r.steering for r in rows], prompt_length=torch.tensor([len(p) for p in prompts])):
            logits = forward(lm, ids, mask, position_ids=position_ids(mask), use_cache=False).logits
        got = completion_logps(lm, prompts, rows, share_prefix=False)
    nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    assert torch.equal(got, -nll.view(ids.shape).sum(-1))


def test_fluency_kl_equals_the_direct_mean(lm: steerlab.LM, vec: steerlab.SteeringVector) -> None:
    """Exact: the same per-position KL, summed over the same positions."""
    texts = [tuple(lm.tokenizer(t)["input_ids"]) for t in TEXTS]
    steerings = [Steering(vec, 2.0), Steering(vec, -1.0, positions="all"), Steering(vec, 3.0, positions=(1, 4))]
    ids, mask = pad_token_ids(list(texts), pad_id(lm.tokenizer), "right")
    with torch.inference_mode():
        ref = torch.log_softmax(forward(lm, ids, mask, position_ids=position_ids(mask)).logits.float(), -1)
        with steerlab.steer_rows(lm, steerings, prompt_length=mask.sum(-1)):
            logp = torch.log_softmax(forward(lm, ids, mask, position_ids=position_ids(mask)).logits.float(), -1)
        got = fluency_kl(lm, texts, steerings)
    per = (ref.exp() * (ref - logp)).sum(-1)[:, :-1] * mask[:, 1:]
    assert torch.equal(got, per.sum(-1) / mask[:, 1:].sum(-1))
    assert (got > 0).all()


def test_score_selects_positions_and_reduces_per_row(lm: steerlab.LM) -> None:
    ids, mask = encode(lm, TEXTS, "right")
    select = predicting(mask)
    assert select.shape == (3, ids.shape[1] - 1) and int(select.sum()) == int(mask.sum()) - 3
    with torch.inference_mode():
        logps = score(lm, ids, mask, select)
        logits = forward(lm, ids, mask, position_ids=position_ids(mask)).logits
    assert torch.equal(logps, torch.log_softmax(logits[:, :-1][select].float(), -1))
    lp = target_logps(logps, ids[:, 1:][select])
    assert torch.equal(lp, logps.gather(-1, ids[:, 1:][select][:, None])[:, 0])
    sums = row_sums(lp, select)
    ends = select.sum(-1).cumsum(0).tolist()
    for r, (start, end) in enumerate(zip([0, *ends], ends)):
        # float noise: a slice's sum against the padded row's (zeros elsewhere), another order
        torch.testing.assert_close(sums[r], lp[start:end].sum())
    assert float(kl(logps, logps).abs().max()) == 0.0
    assert spans(3, [(0, 1), (1, 3)]).tolist() == [[True, False, False], [False, True, True]]
