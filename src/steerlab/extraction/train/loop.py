"""Train a steering vector on preference pairs with the model frozen: :func:`train_vector`.

One vector per chosen layer (zeros at the start: the unsteered model) is the only thing with a
gradient; every parameter of the model keeps ``requires_grad=False`` and Adam holds state for the
vectors alone. Each optimiser step scores a mini-batch of pairs — chosen and rejected completions,
under ``+c·v`` and ``−c·v`` — in one padded batch per micro-batch (:mod:`steerlab.extraction.train.forward`),
with the unsteered reference log-probabilities computed once for the whole data set.

**Where the vector acts.** ``positions="generated"`` (default) adds it at the completion tokens
only: the prompt is read unsteered and the first completion token is predicted from the unsteered
prompt, exactly what ``Steering(vec, ±c, positions="generated")`` does at inference (steering
from the first generated token on). ``positions="all"`` adds it at every token, prompt included
(``Steering(vec, ±c)`` at inference; the only kind :func:`steerlab.export.bake` can write into weights).
The vector's metadata records the choice (``meta["positions"]``).

Held-out pairs (``holdout``) give an early stop: after each epoch their loss is measured, the best
vector so far is kept, and training stops after ``patience`` epochs without improvement. With a
``checkpoint`` file the state is saved after every step and an interrupted run resumes from it
exactly (same batches, same coefficients, same Adam moments).

Example:
    >>> vec = train_vector(lm, pairs, "bipo", layers=[12], config=TrainConfig(lr=0.02))  # doctest: +SKIP
    >>> vec.meta["heldout_loss"]  # doctest: +SKIP
    [0.61, 0.52, 0.49]
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...core.steering import Steering
from ...core.vector import SteeringVector
from ...data.preference import PreferencePair, preference_hash, preference_pairs
from ...errors import DatasetError
from ...models.load import LM
from ...progress import track
from .config import StepCallback, TrainConfig, TrainingError
from .encode import EncodedPair, encode_pairs, encode_texts
from .forward import completion_logps, fluency_kl, pair_rows
from .objectives import OBJECTIVES, Objective, Scores
from .state import TrainState, checkpoint_path


# ---------------------------------------------------------------------------------- data
def split(n: int, holdout: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded ``(train, held-out)`` indices; at least one pair on each side when ``holdout > 0``.

    Example:
        >>> split(10, 0.2, 0)[1]
        [4, 1]
    """
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    held = 0 if holdout <= 0 or n < 2 else min(n - 1, max(1, round(holdout * n)))
    return order[held:], order[:held]


def _generator(seed: int, *salt: int) -> torch.Generator:
    h = hashlib.sha256(repr((seed, *salt)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(h[:8], "little") & ((1 << 63) - 1))


def live_vector(lm: LM, params: dict[int, torch.Tensor]) -> SteeringVector:
    """A :class:`SteeringVector` whose directions *are* the trainable tensors (not copies), so a
    :class:`Steering` of it carries gradients into them; the engine reads the directions each
    time a steering session starts."""
    vec = SteeringVector({k: torch.zeros(lm.d_model) for k in params}, lm.model_id, lm.d_model, lm.n_layers, "training")
    vec.directions = dict(params)
    return vec


@dataclass
class _Run:
    """What every step of one run reads."""

    lm: LM
    objective: Objective
    cfg: TrainConfig
    pairs: list[EncodedPair]
    train: list[int]
    held: list[int]
    neutral: list[tuple[int, ...]]
    share_prefix: bool

    @property
    def beta(self) -> float:
        assert self.cfg.beta is not None
        return float(self.cfg.beta)

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.train) // self.cfg.batch_size)


# ---------------------------------------------------------------------------------- scoring
def _scores(
    run: _Run, idx: Sequence[int], ref: torch.Tensor, vec: SteeringVector, coefs: list[tuple[float, ...]]
) -> Scores:
    """Score pairs ``idx`` under their signed coefficients (one or two per pair)."""
    pairs = [run.pairs[i] for i in idx]
    prompts, rows, prompt_steering = pair_rows(pairs, coefs, vec, run.cfg.positions)
    logp = completion_logps(run.lm, prompts, rows, prompt_steering, run.share_prefix).view(-1, 2)
    owner = [j for j, pc in enumerate(coefs) for _ in pc]
    r = ref[[idx[j] for j in owner]]
    lengths = torch.tensor([[len(pairs[j].chosen), len(pairs[j].rejected)] for j in owner], dtype=torch.float32)
    sign = torch.tensor([1.0 if c > 0 else -1.0 for pc in coefs for c in pc])
    return Scores(sign, logp[:, 0], logp[:, 1], r[:, 0], r[:, 1], lengths[:, 0], lengths[:, 1])


def reference_logps(
    lm: LM,
    pairs: Sequence[EncodedPair],
    batch_size: int = 16,
    progress: bool | None = None,
    share_prefix: bool = True,
) -> torch.Tensor:
    """``[n, 2]``: the unsteered model's summed log-probabilities of each pair's chosen and rejected
    completion (the reference of both objectives; computed once per run)."""
    out = []
    starts = range(0, len(pairs), batch_size)
    for start in track(starts, "reference log-probabilities", enabled=progress if len(starts) > 1 else False):
        chunk = pairs[start : start + batch_size]
        prompts, rows, _ = pair_rows(chunk, [(1.0,)] * len(chunk), None, "generated")
        with torch.inference_mode():
            out.append(completion_logps(lm, prompts, rows, share_prefix=share_prefix).view(len(chunk), 2))
    return torch.cat(out).clone()


# ---------------------------------------------------------------------------------- steps
def _coefficients(run: _Run, step: int, n: int) -> list[tuple[float, ...]]:
    """The signed coefficients each of ``n`` pairs is scored at in ``step``: a factor drawn from
    ``factors``, with both signs or one drawn sign (``directions``)."""
    factors = run.cfg.factors
    pick = torch.randint(len(factors), (n,), generator=_generator(run.cfg.seed, 2, step)).tolist()
    if run.cfg.directions == "both":
        return [(factors[i], -factors[i]) for i in pick]
    if run.cfg.directions in ("positive", "negative"):  # one side only: a vector per direction
        sign = 1.0 if run.cfg.directions == "positive" else -1.0
        return [(sign * factors[i],) for i in pick]
    signs = torch.randint(2, (n,), generator=_generator(run.cfg.seed, 4, step)).tolist()
    return [(factors[i] if s else -factors[i],) for i, s in zip(pick, signs)]


def _batch(run: _Run, step: int) -> list[int]:
    epoch, within = divmod(step, run.steps_per_epoch)
    order = torch.randperm(len(run.train), generator=_generator(run.cfg.seed, 1, epoch)).tolist()
    size = run.cfg.batch_size
    return [run.train[i] for i in order[within * size : (within + 1) * size]]


def _fluency(run: _Run, vec: SteeringVector, step: int) -> torch.Tensor:
    n = min(len(run.neutral), run.cfg.batch_size)
    pick = torch.randperm(len(run.neutral), generator=_generator(run.cfg.seed, 3, step))[:n].tolist()
    texts = [run.neutral[i] for i in pick for _ in (0, 1)]
    steerings = [Steering(vec, c, positions="all") for _ in pick for c in (1.0, -1.0)]
    return fluency_kl(run.lm, texts, steerings).mean()


def _train_step(run: _Run, state: TrainState, step: int) -> tuple[float, float, int]:
    """One optimiser step; returns (summed pair loss, summed accuracy, pairs)."""
    batch = _batch(run, step)
    coefs = _coefficients(run, step, len(batch))
    vec = live_vector(run.lm, state.params)
    assert state.ref is not None
    state.optimizer.zero_grad(set_to_none=True)
    loss_sum, acc_sum = 0.0, 0.0
    micro = run.cfg.micro_batch_size
    per_pair = len(coefs[0])  # directions scored per pair
    for start in range(0, len(batch), micro):
        s = _scores(run, batch[start : start + micro], state.ref, vec, coefs[start : start + micro])
        losses = run.objective.loss(s, run.beta) / per_pair
        (losses.sum() / len(batch)).backward()
        loss_sum += float(losses.detach().sum())
        acc_sum += float(s.accuracy().sum()) / per_pair
    if run.cfg.fluency_weight > 0 and run.neutral:
        (run.cfg.fluency_weight * _fluency(run, vec, step)).backward()
    state.optimizer.step()
    return loss_sum, acc_sum, len(batch)


def _heldout(run: _Run, state: TrainState) -> tuple[float, float]:
    """Mean loss and accuracy of the held-out pairs at the middle training coefficient, in both
    directions (in its own direction only for a one-sided vector)."""
    assert state.ref is not None
    vec = live_vector(run.lm, state.params)
    c = sorted(run.cfg.factors)[len(run.cfg.factors) // 2]
    sides = {"positive": (c,), "negative": (-c,)}.get(run.cfg.directions or "", (c, -c))
    loss, acc = 0.0, 0.0
    with torch.no_grad():
        for start in range(0, len(run.held), run.cfg.micro_batch_size):
            idx = run.held[start : start + run.cfg.micro_batch_size]
            s = _scores(run, idx, state.ref, vec, [sides] * len(idx))
            loss += float(run.objective.loss(s, run.beta).sum()) / len(sides)
            acc += float(s.accuracy().sum()) / len(sides)
    return loss / len(run.held), acc / len(run.held)


def _end_epoch(run: _Run, state: TrainState) -> None:
    total, acc, n = state.running
    state.train_loss.append(total / max(n, 1))
    state.train_accuracy.append(acc / max(n, 1))
    state.running = [0.0, 0.0, 0.0]
    if not run.held:
        return
    loss, accuracy = _heldout(run, state)
    state.heldout_loss.append(loss)
    state.heldout_accuracy.append(accuracy)
    if loss < state.best_loss:
        state.best_loss, state.best_epoch, state.bad_epochs = loss, len(state.heldout_loss) - 1, 0
        state.best = {k: p.detach().clone() for k, p in state.params.items()}
    else:
        state.bad_epochs += 1
        state.stopped = state.bad_epochs >= run.cfg.patience


# ---------------------------------------------------------------------------------- entry point
@contextmanager
def frozen(lm: LM) -> Iterator[None]:
    """Every model parameter has ``requires_grad=False`` inside the block (so no gradient and no
    optimiser state is ever made for a weight); the flags are restored afterwards."""
    flags = [(p, p.requires_grad) for p in lm.model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _key(run: _Run, layers: list[int], objective: str) -> str:
    blob = repr((objective, run.cfg.settings(), run.pairs, run.train, run.neutral, layers, run.lm.model_id))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def train_vector(
    lm: LM,
    data: Sequence[PreferencePair | Any],
    objective: str,
    layers: list[int],
    config: TrainConfig | None = None,
    *,
    fluency_texts: Sequence[str] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    on_step: StepCallback | None = None,
    share_prefix: bool = True,
) -> SteeringVector:
    """Train a steering vector at ``layers`` on preference data (see the module docs).

    Args:
        lm: the model (its parameters are set to ``requires_grad=False``; the weights never change).
        data: :class:`~steerlab.data.preference.PreferencePair` objects, or anything
            :func:`~steerlab.data.preference.preference_pairs` turns into them (CAA items, contrast pairs).
        objective: ``"bipo"`` or ``"reps"`` (:mod:`steerlab.extraction.train.objectives`).
        layers: block indices (checked by the caller).
        config: the :class:`TrainConfig` (default settings when ``None``).
        fluency_texts: neutral texts for the KL term (default: the training pairs' prompts).
        checkpoint: a file saved after every step; a run called again with the same arguments
            resumes from it. Deleted when the vector is done.
        progress: show progress bars.
        on_step: called after every step (and checkpoint) with the step's numbers.
        share_prefix: run each prompt once for all rows that continue it.

    Raises:
        DatasetError: no usable pairs, or a checkpoint of another run.
        TrainingError: a setting out of range.
    """
    if objective not in OBJECTIVES:
        raise TrainingError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    cfg = (config or TrainConfig()).resolved(objective)
    prefs = preference_pairs(data)
    pairs = encode_pairs(lm, prefs)
    train, held = split(len(pairs), cfg.holdout, cfg.seed)
    neutral = encode_texts(lm, fluency_texts) if fluency_texts is not None else sorted({pairs[i].prompt for i in train})
    neutral = [t for t in neutral if len(t) >= 2] if cfg.fluency_weight > 0 else []
    if cfg.fluency_weight > 0 and not neutral:
        raise DatasetError("fluency_weight > 0 needs neutral texts of two or more tokens: pass fluency_texts=[...]")
    run = _Run(lm, OBJECTIVES[objective], cfg, pairs, train, held, neutral, share_prefix)
    state = TrainState.fresh(layers, lm.d_model, cfg.lr)
    path, key = checkpoint_path(checkpoint), _key(run, layers, objective)
    if path is not None and path.exists():
        state.load(path, key, run.cfg.epochs * run.steps_per_epoch, run.steps_per_epoch, len(pairs))
    with frozen(lm):
        if state.ref is None:
            state.ref = reference_logps(lm, pairs, 2 * cfg.micro_batch_size, progress, share_prefix)
        _loop(run, state, path, key, progress, on_step)
    if path is not None and path.is_file():
        path.unlink()
    return _result(run, state, prefs, layers, objective)


def _loop(
    run: _Run, state: TrainState, path: Path | None, key: str, progress: bool | None, on_step: StepCallback | None
) -> None:
    total = run.cfg.epochs * run.steps_per_epoch
    for step in track(range(state.step, total), f"training a {run.objective.name} vector", enabled=progress):
        if state.stopped:
            break
        loss, acc, n = _train_step(run, state, step)
        state.running = [state.running[0] + loss, state.running[1] + acc, state.running[2] + n]
        state.step = step + 1
        if state.step % run.steps_per_epoch == 0:
            _end_epoch(run, state)
        if path is not None:
            state.save(path, key)
        if on_step is not None:
            on_step({"epoch": step // run.steps_per_epoch, "step": step, "loss": loss / n, "accuracy": acc / n})


def _result(
    run: _Run, state: TrainState, prefs: list[PreferencePair], layers: list[int], objective: str
) -> SteeringVector:
    final = state.best if state.best is not None else {k: p.detach() for k, p in state.params.items()}
    meta: dict[str, Any] = {
        "objective": objective,
        **run.cfg.settings(),
        "layers": layers,
        "n_pairs": len(run.pairs),
        "n_train": len(run.train),
        "n_heldout": len(run.held),
        "epochs_run": len(state.train_loss),
        "steps": state.step,
        "train_loss": state.train_loss,
        "train_accuracy": state.train_accuracy,
        "heldout_loss": state.heldout_loss,
        "heldout_accuracy": state.heldout_accuracy,
        "best_epoch": state.best_epoch if state.best is not None else len(state.train_loss) - 1,
        "early_stopped": state.stopped,
        "inference": f"Steering(vec, ±c, positions={run.cfg.positions!r})",
        "model_type": run.lm.model_type,
    }
    return SteeringVector(
        directions={k: final[k].detach().clone() for k in layers},
        model_id=run.lm.model_id,
        d_model=run.lm.d_model,
        n_layers=run.lm.n_layers,
        method=objective,
        data_hash=preference_hash(prefs),
        meta=meta,
    )
