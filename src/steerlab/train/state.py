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

from ..files import read_checkpoint, write_checkpoint


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
            "step": self.step, "best_loss": self.best_loss, "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs, "stopped": self.stopped, "train_loss": self.train_loss,
            "train_accuracy": self.train_accuracy, "heldout_loss": self.heldout_loss,
            "heldout_accuracy": self.heldout_accuracy, "running": self.running,
        }
        return {"state": json.dumps(scalars)}

    def save(self, path: Path, key: str) -> None:
        """Write the state to ``path`` (atomically), tagged with the run's ``key``."""
        write_checkpoint(path, self.tensors(), key, **self.meta())

    def load(self, path: Path, key: str) -> None:
        """Restore the state saved at ``path``.

        Raises:
            DatasetError: the file belongs to another run (other data, settings, layers or model).
        """
        saved, meta = read_checkpoint(
            path, key, "training run (different method, data, settings, layers or model)"
        )
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(saved[f"vec.{k}"])
        if any(name.startswith("best.") for name in saved):
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
        scalars = json.loads(meta["state"])
        for name, value in scalars.items():
            setattr(self, name, value)


def checkpoint_path(checkpoint: str | os.PathLike[str] | None) -> Path | None:
    """The checkpoint as a path (``None``: no checkpointing)."""
    return Path(checkpoint) if checkpoint is not None else None
