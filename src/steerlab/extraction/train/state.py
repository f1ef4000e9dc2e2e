"""Everything a training run needs to resume exactly: the vectors, Adam's moments, the step, the
best held-out vector so far, the per-epoch history and the cached reference log-probabilities —
saved to one safetensors file after every step (:func:`steerlab.files.write_checkpoint`), the way
:func:`steerlab.extract` saves a streaming checkpoint.

Example:
    >>> state = TrainState.fresh([3], d_model=4)
    >>> state.params[3].requires_grad, state.step
    (True, 0)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...errors import CheckpointError
from ...files import read_checkpoint, write_checkpoint


@dataclass
class TrainState:
    """The resumable state of one training run."""

    params: dict[int, torch.Tensor]
    optimizer: torch.optim.Optimizer
    step: int = 0
    best: dict[int, torch.Tensor] | None = None
    best_loss: float = float("inf")
    best_epoch: int = -1
    bad_epochs: int = 0
    stopped: bool = False
    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    heldout_loss: list[float] = field(default_factory=list)
    heldout_accuracy: list[float] = field(default_factory=list)
    running: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # loss sum, accuracy sum, pairs
    ref: torch.Tensor | None = None  # [n_pairs, 2]: reference log p(chosen), log p(rejected)

    @classmethod
    def fresh(cls, layers: list[int], d_model: int, lr: float = 0.01) -> TrainState:
        """Zero vectors (BiPO's start: the unsteered model) and a new Adam optimiser."""
        params = {k: torch.zeros(d_model, dtype=torch.float32, requires_grad=True) for k in layers}
        return cls(params=params, optimizer=torch.optim.Adam(list(params.values()), lr=lr))

    # ------------------------------------------------------------------ persistence
    def tensors(self) -> dict[str, torch.Tensor]:
        out = {f"vec.{k}": p.detach().clone() for k, p in self.params.items()}
        if self.best is not None:
            out.update({f"best.{k}": t.clone() for k, t in self.best.items()})
        if self.ref is not None:
            out["ref"] = self.ref.clone()
        opt_state = self.optimizer.state_dict()["state"]
        for i, k in enumerate(self.params):
            for name, t in opt_state.get(i, {}).items():
                out[f"adam.{k}.{name}"] = torch.as_tensor(t).detach().clone()
        return out

    def meta(self) -> dict[str, str]:
        scalars = {
            "step": self.step,
            "best_loss": self.best_loss,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "stopped": self.stopped,
            "train_loss": self.train_loss,
            "train_accuracy": self.train_accuracy,
            "heldout_loss": self.heldout_loss,
            "heldout_accuracy": self.heldout_accuracy,
            "running": self.running,
        }
        return {"state": json.dumps(scalars)}

    def save(self, path: Path, key: str) -> None:
        """Write the state to ``path`` (atomically), tagged with the run's ``key``."""
        write_checkpoint(path, self.tensors(), key, **self.meta())

    def load(self, path: Path, key: str, total_steps: int, steps_per_epoch: int, n_pairs: int) -> None:
        """Restore the state saved at ``path``, checked against the run first: the file
        (:func:`~steerlab.files.read_checkpoint`), its tensors' names and shapes (vectors and Adam's
        moments ``[d_model]``, reference log-probabilities ``[n_pairs, 2]``), its step
        (``1 .. total_steps``) and the per-epoch history that step implies.

        Raises:
            CheckpointError: the file is unreadable, altered, or belongs to another run (other
                data, settings, layers or model).
        """
        d = next(iter(self.params.values())).shape
        shapes = {f"vec.{k}": tuple(d) for k in self.params}
        optional: dict[str, tuple[int, ...]] = {"ref": (n_pairs, 2)}
        for k in self.params:
            optional.update(
                {
                    f"best.{k}": tuple(d),
                    f"adam.{k}.step": (),
                    f"adam.{k}.exp_avg": tuple(d),
                    f"adam.{k}.exp_avg_sq": tuple(d),
                    f"adam.{k}.max_exp_avg_sq": tuple(d),
                }
            )
        saved, meta = read_checkpoint(
            path, key, "training run (different method, data, settings, layers or model)", shapes, optional
        )
        scalars = _scalars(path, meta.get("state", ""), total_steps, steps_per_epoch)
        best = [name for name in saved if name.startswith("best.")]
        if best and len(best) != len(self.params):
            raise CheckpointError(
                f"checkpoint {path} holds a best vector for only some layers; delete it to start the run over"
            )
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(saved[f"vec.{k}"])
        if best:
            self.best = {k: saved[f"best.{k}"] for k in self.params}
        self.ref = saved.get("ref")
        opt_state: dict[int, dict[str, Any]] = {}
        for i, k in enumerate(self.params):
            prefix = f"adam.{k}."
            entry = {name[len(prefix) :]: t for name, t in saved.items() if name.startswith(prefix)}
            if entry:
                opt_state[i] = entry
        groups = self.optimizer.state_dict()["param_groups"]
        self.optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
        for name, value in scalars.items():
            setattr(self, name, value)


_LISTS = ("train_loss", "train_accuracy", "heldout_loss", "heldout_accuracy")


def _scalars(path: Path, text: str, total_steps: int, steps_per_epoch: int) -> dict[str, Any]:
    """A checkpoint's scalar state, checked against the run: the step within ``1 .. total_steps``,
    one history entry per epoch that step completed, numbers where numbers belong."""

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {path}: its training state {why}; delete it to start the run over")

    try:
        scalars = json.loads(text)
    except ValueError:
        raise bad("is not valid JSON") from None
    if not isinstance(scalars, dict) or set(scalars) != _SCALARS:
        raise bad(f"does not hold the fields {sorted(_SCALARS)}")
    step = scalars["step"]
    if type(step) is not int or not 1 <= step <= total_steps:
        raise bad(f"is at step {step!r}, outside this run's 1..{total_steps}")
    epochs = step // steps_per_epoch
    lists = [scalars[name] for name in _LISTS]
    if not all(isinstance(x, list) and all(_number(v) for v in x) for x in lists):
        raise bad("holds a history that is not a list of numbers")
    if len(lists[0]) != epochs or len(lists[1]) != epochs or len(lists[2]) != len(lists[3]) or len(lists[2]) > epochs:
        raise bad(f"has a history of {len(lists[0])} epoch(s) at step {step} ({epochs} epoch(s) done)")
    running = scalars["running"]
    if not (isinstance(running, list) and len(running) == 3 and all(_number(v) for v in running)):
        raise bad("holds running sums that are not three numbers")
    if not (
        _number(scalars["best_loss"])
        and type(scalars["best_epoch"]) is int
        and type(scalars["bad_epochs"]) is int
        and type(scalars["stopped"]) is bool
        and -1 <= scalars["best_epoch"] < max(epochs, 1)
        and 0 <= scalars["bad_epochs"] <= epochs
    ):
        raise bad("holds a best epoch, bad-epoch count or stop flag that does not fit its history")
    return scalars


_SCALARS = {"step", "best_loss", "best_epoch", "bad_epochs", "stopped", *_LISTS, "running"}


def _number(value: Any) -> bool:
    return type(value) in (int, float)


def checkpoint_path(checkpoint: str | os.PathLike[str] | None) -> Path | None:
    """The checkpoint as a path (``None``: no checkpointing)."""
    return Path(checkpoint) if checkpoint is not None else None
