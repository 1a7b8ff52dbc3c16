"""Training that repairs a mask head that stopped learning, instead of only warning about it.

The collapse monitor (training/collapse.py) names a mask head that saturated: masks marking most
pixels outside their boxes. That state cannot come back by itself: once every mask logit is large,
the sigmoid's gradient is gone and the projection term cannot pull the masks back (docs/results.md,
"Box-only training over seeds"). Measured on the stress set (docs/results.md, "Training that heals
itself"): a fresh mask head on the collapsed run's features saturates again within 20-40 iterations,
even at 1/16 of the step; the features the saturated head trained are part of the collapse. A heal
therefore goes back in time:

1. the model and optimizer return to the last logging window whose masks looked healthy
   (`looks_healthy`; a `Snapshot` kept in memory, or the run's start when none was);
2. when that is the start of a run from scratch, the controller (the FCOS head's conv that generates the dynamic
   heads' weights) and the mask branch get a fresh initialisation from a seed of their own (the
   same on every process); a healthy snapshot keeps its mask head;
3. the mask side's learning rate is multiplied by `TrainConfig.heal_lr_scale` (each heal again,
   momentum cleared): the step that saturated it is not taken again;
4. the pairwise term's warm-up starts again from the heal (the projection term first teaches the
   head where the boxes are), and the monitor judges again only after CHECK_FROM of the schedule.

The iteration count goes on: a heal spends the same schedule, it does not lengthen it. At most
`TrainConfig.max_heals` times, and only while at least MIN_REMAINING of the schedule is left (a
head re-initialised near the end would ship untrained). Each heal goes into the log and
`metrics.jsonl` ({"iteration", "heal": {...}}) and into the checkpoints' "heals" list, which
`boxinst eval` prints. `boxinst train --no-heal` only warns, as before. The snapshot lives in
memory: a run resumed from `last.pt` starts with a snapshot of what it resumed.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from torch import nn

from training.collapse import BOX_FILL, CHECK_FROM, OUTSIDE_FILL, CollapseMonitor

# A heal needs this share of the schedule left, and at least MIN_ITERS_LEFT iterations, else the
# collapse is only reported: the healed head of the stress set needed about 120 iterations to be
# back in the healthy range (docs/results.md, "Training that heals itself"); a run shorter than
# that (the tests' 30-iteration fixtures) would only swap one untrained head for another.
MIN_REMAINING = 0.4
MIN_ITERS_LEFT = 120
# The collapse reason that a heal repairs: saturation, masks covering the pixels outside their
# boxes. A projection loss that falls slowly while the masks stay in their boxes is a slow learner,
# not a saturated one (measured: healing it threw away a head that was learning). Blobs
# ("box_fill", "spill") are judged only late in the schedule (SHAPE_CHECK_FROM), when too little
# of it is left to train a new head.
HEALED_REASONS = ("outside",)


@dataclass
class Snapshot:
    """The model and optimizer of the last logging window whose masks looked healthy (or of the
    run's start), kept in memory (on the CPU) for a heal to go back to."""

    iteration: int
    model: dict
    optimizer: dict
    # Taken at the start of a run from scratch, before any window was judged healthy: its mask side
    # is only the draw of a seed, and a heal draws it again. False for a healthy window's, and for
    # the start of a run from --init or --resume (a heal keeps the mask head it started with).
    initial: bool

    @classmethod
    def take(cls, model: nn.Module, optimizer: torch.optim.Optimizer, iteration: int,
             initial: bool = False) -> "Snapshot":
        return cls(iteration, {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
                   copy.deepcopy(_to_cpu(optimizer.state_dict())), initial)


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu")
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def looks_healthy(window: dict) -> bool:
    """Whether a logging window (CollapseMonitor.window's record) shows masks that are not
    saturated: they mark at most OUTSIDE_FILL of the pixels outside their boxes and at most
    BOX_FILL of the boxes. A window without mask statistics is not healthy evidence."""
    return ("mask_outside_fill" in window and not window.get("collapse")
            and window["mask_outside_fill"] <= OUTSIDE_FILL and window["mask_box_fill"] <= BOX_FILL)


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
    rolled_back_to: int | None = None  # the iteration of the snapshot the model went back to
    reinitialised: bool = True  # whether the controller and mask branch were drawn afresh

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
    on, heals left, a reason a heal repairs, and at least MIN_REMAINING of the schedule and
    MIN_ITERS_LEFT iterations left."""
    return (enabled and heals_done < max_heals and any(r in HEALED_REASONS for r in reasons)
            and iters - iteration >= max(MIN_REMAINING * iters, MIN_ITERS_LEFT))


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
         reasons: dict[str, str], iteration: int, lr_scale: float, run_seed: int,
         snapshot: Snapshot | None = None) -> Heal:
    """Heal the mask side at `iteration` (see the module docstring) and record it in `state`: the
    model and optimizer go back to `snapshot` (the last healthy window's) when given, the mask side
    is drawn again when there is none or it is the start of a run from scratch, its step is
    lowered, and the monitor judges again from CHECK_FROM of the schedule later (against the run's
    own start). The iteration count goes on: a heal spends the same schedule, it does not lengthen it."""
    seed = run_seed * 1000 + len(state.heals) + 1
    scales = [g.get("lr_scale", 1.0) for g in optimizer.param_groups]
    if snapshot is not None:
        model.load_state_dict(snapshot.model)
        optimizer.load_state_dict(copy.deepcopy(snapshot.optimizer))
        for group, group_scale in zip(optimizer.param_groups, scales):
            group["lr_scale"] = group_scale  # the heals so far keep their lowered steps
    reinitialised = snapshot is None or snapshot.initial
    if reinitialised:
        reinitialise_mask_side(model, build, seed)
    scale = scale_mask_side_lr(optimizer, lr_scale)
    state.pairwise_from = iteration
    monitor.restart(iteration + int(round(CHECK_FROM * monitor.iters)))
    record = Heal(iteration=iteration, reasons=dict(reasons), mask_lr_scale=scale, seed=seed,
                  rolled_back_to=snapshot.iteration if snapshot is not None else None, reinitialised=reinitialised)
    state.heals.append(record.to_dict())
    return record


def describe(heals: list[dict]) -> str:
    """One line for `boxinst eval` and the end of training: "" when the run was never healed."""
    if not heals:
        return ""
    def one(h: dict) -> str:
        back = h.get("rolled_back_to")
        to = "" if back is None else f", back to iteration {back}" + (" with a new mask head" if h.get("reinitialised")
                                                                     else "")
        return f"iteration {h['iteration']} ({'; '.join(h['reasons'])}{to})"

    return (f"this run was healed {len(heals)} time(s): at {', '.join(one(h) for h in heals)}; the mask side's "
            f"step is now x{heals[-1]['mask_lr_scale']:g} (training/heal.py)")
