"""Training that repairs a mask head that stopped learning, instead of only warning about it.

The collapse monitor (training/collapse.py) names a mask head that is not learning. Its saturated
form cannot come back by itself: once every mask logit is large, the sigmoid's gradient is gone
and the projection term cannot pull the masks back (docs/results.md, "Box-only training over
seeds"). The detector, meanwhile, trains on its own losses and is fine. A heal therefore keeps
the detector and gives the mask side a new start:

1. the controller (the FCOS head's conv that generates the dynamic heads' weights) and the mask
   branch get a fresh initialisation (the model's own, from a seed of its own: the same on every
   process), and their momentum is cleared;
2. their learning rate is multiplied by `TrainConfig.heal_lr_scale` (each heal again): the step
   that saturated them is not taken again;
3. the pairwise term's warm-up starts again from the heal (the projection term first teaches the
   new head where the boxes are), and the monitor measures its start again and judges it only
   after CHECK_FROM of the schedule has passed once more.

At most `TrainConfig.max_heals` times, and only while at least MIN_REMAINING of the schedule is
left (a head re-initialised near the end would ship untrained). Each heal goes into the log and
`metrics.jsonl` ({"iteration", "heal": {...}}) and into the checkpoints' "heals" list, which
`boxinst eval` prints. `boxinst train --no-heal` only warns, as before.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from training.collapse import CHECK_FROM, CollapseMonitor

# A heal needs this share of the schedule left, else the collapse is only reported.
MIN_REMAINING = 0.4
# The collapse reasons that a heal repairs: the ones checked from CHECK_FROM on (a head that
# saturated, masks covering the image). Blobs ("box_fill", "spill") are judged only late in the
# schedule (SHAPE_CHECK_FROM), when too little of it is left to train a new head.
HEALED_REASONS = ("projection", "outside")


def mask_side_prefixes() -> tuple[str, ...]:
    """The parameter-name prefixes of the mask side of a CondInst model: the controller and the
    mask branch (the dynamic heads have no parameters of their own)."""
    return ("head.controller.", "mask_branch.")


def is_mask_side(name: str) -> bool:
    return name.startswith(mask_side_prefixes())


@dataclass
class Heal:
    """One heal: when, why, and the mask side's learning-rate scale after it."""

    iteration: int
    reasons: dict[str, str]
    mask_lr_scale: float
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class HealState:
    """What a run's heals change in its loop, saved in `last.pt` so that --resume goes on alike:
    the heals so far and the iteration the pairwise warm-up counts from (the monitor keeps the
    first iteration it judges again in its own state)."""

    heals: list[dict]
    pairwise_from: int = 0

    @classmethod
    def fresh(cls) -> "HealState":
        return cls(heals=[])

    def state_dict(self) -> dict:
        return {"heals": list(self.heals), "pairwise_from": self.pairwise_from}

    @classmethod
    def from_state_dict(cls, state: dict | None) -> "HealState":
        if not state:
            return cls.fresh()
        return cls(heals=list(state["heals"]), pairwise_from=int(state["pairwise_from"]))


def should_heal(reasons: dict[str, str], iteration: int, iters: int, heals_done: int, max_heals: int,
                enabled: bool) -> bool:
    """Whether the collapse `reasons` of the window ending at `iteration` call for a heal: healing
    on, heals left, a reason a heal repairs, and at least MIN_REMAINING of the schedule left."""
    return (enabled and heals_done < max_heals and any(r in HEALED_REASONS for r in reasons)
            and iters - iteration >= MIN_REMAINING * iters)


def reinitialise_mask_side(model: nn.Module, build, seed: int) -> None:
    """Give `model`'s controller and mask branch (parameters and BatchNorm statistics) the fresh
    initialisation of `build()` (a function returning a new model of the same config) under
    `seed`, so that every process of a data-parallel run draws the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = build()
    fresh_state = fresh.state_dict()
    state = model.state_dict()
    with torch.no_grad():
        for name, tensor in state.items():
            if is_mask_side(name):
                tensor.copy_(fresh_state[name].to(tensor.device, tensor.dtype))


def scale_mask_side_lr(optimizer: torch.optim.Optimizer, scale: float) -> float:
    """Multiply the mask side's groups' "lr_scale" by `scale`, clear their momentum; returns the new
    scale. The groups are build_optimizer's (training/trainer.py), marked "mask_side": True."""
    new = None
    for group in optimizer.param_groups:
        if group.get("mask_side"):
            group["lr_scale"] = group.get("lr_scale", 1.0) * scale
            new = group["lr_scale"]
            for p in group["params"]:
                optimizer.state.pop(p, None)
    if new is None:
        raise ValueError("the optimizer has no mask-side parameter group to heal")
    return new


def heal(model: nn.Module, build, optimizer: torch.optim.Optimizer, monitor: CollapseMonitor, state: HealState,
         reasons: dict[str, str], iteration: int, lr_scale: float, run_seed: int) -> Heal:
    """Heal the mask side at `iteration` (see the module docstring) and record it in `state`: the
    monitor starts over (its start measured again, judging from CHECK_FROM of the schedule later)."""
    seed = run_seed * 1000 + len(state.heals) + 1
    reinitialise_mask_side(model, build, seed)
    scale = scale_mask_side_lr(optimizer, lr_scale)
    state.pairwise_from = iteration
    monitor.restart(iteration + int(round(CHECK_FROM * monitor.iters)))
    record = Heal(iteration=iteration, reasons=dict(reasons), mask_lr_scale=scale, seed=seed)
    state.heals.append(record.to_dict())
    return record


def describe(heals: list[dict]) -> str:
    """One line for `boxinst eval` and the end of training: "" when the run was never healed."""
    if not heals:
        return ""
    at = ", ".join(f"iteration {h['iteration']} ({'; '.join(h['reasons'])})" for h in heals)
    return (f"this run was healed {len(heals)} time(s): its mask head was re-initialised at {at}, the mask side's "
            f"step is now x{heals[-1]['mask_lr_scale']:g} (training/heal.py)")
