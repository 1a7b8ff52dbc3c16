"""A training run's checkpoints: what `OUT/last.pt` and `OUT/final.pt` hold, writing them, and
reading `last.pt` back for --resume.

A module of its own because the format is a contract with other readers, not a detail of the
loop: --resume reads `last.pt` back here, `boxinst eval`, export and `--init` read `final.pt`
through boxinst_serve.checkpoint. "What does a checkpoint hold, how does resume work" is answered
here; the loop (training/trainer.py) only says when to save. Both files are written atomically
(boxinst_serve.checkpoint.save_atomic): a kill never leaves a half-written checkpoint."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from boxinst_serve.checkpoint import load_checkpoint, save_atomic
from boxinst_serve.config import ModelConfig
from training.collapse import CollapseMonitor
from training.config import TrainConfig
from training.heal import HealState

LAST, FINAL = "last.pt", "final.pt"  # in the run's output folder: resumable / weights only


def load_for_resume(out: Path) -> dict[str, Any]:
    """`out/last.pt` for --resume: {"model": state dict, "model_config": a ModelConfig,
    "train_config": a TrainConfig dict, "iteration": the next one to run, "optimizer": state dict,
    "collapse_monitor": state dict (absent in checkpoints written before it existed), "heal_state"
    (training/heal.py; absent before heals existed)}.
    Raises FileNotFoundError when there is none."""
    last = out / LAST
    if not last.exists():
        raise FileNotFoundError(f"--resume: no checkpoint '{last}' to resume from")
    return load_checkpoint(last)


def save_checkpoint(path: Path, model: nn.Module, model_cfg: ModelConfig, train_cfg: TrainConfig, iteration: int,
                    optimizer: torch.optim.Optimizer | None = None, monitor: CollapseMonitor | None = None,
                    heal_state: HealState | None = None) -> None:
    """Write a checkpoint atomically: {"model", "model_config", "train_config", "iteration",
    "heals": the run's heals so far (training/heal.py; [] when none)}, plus "optimizer",
    "collapse_monitor" and "heal_state" when `optimizer` (and `monitor`) are given. With them it is
    resumable (`last.pt`: what --resume needs); without, weights and configs only (`final.pt`: what
    eval, export and --init read), half the bytes of a resumable one."""
    heal_state = heal_state or HealState.fresh()
    state = {"model": model.state_dict(), "model_config": model_cfg.to_dict(),
             "train_config": train_cfg.to_dict(), "iteration": iteration, "heals": list(heal_state.heals)}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
        state["collapse_monitor"] = monitor.state_dict()
        state["heal_state"] = heal_state.state_dict()
    save_atomic(state, path)
