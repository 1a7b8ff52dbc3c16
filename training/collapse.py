"""Noticing a mask head that is not learning, while training runs.

Box-only training can fail silently: the detection losses fall, while the mask head settles on
masks that cover their boxes or the whole image. The projection term then stays near its start
(masks covering the image give dice ~0.5 per axis for a box a third of the image wide) and the
pairwise term is satisfied by a uniform mask, so nothing pulls it out (docs/results.md, "Box-only
training over seeds").
A subtler failure: masks that mark most of their box and spill beyond it (blobs, no shapes). The
detector works, the projection loss is low, and yet the masks are worse than the filled boxes.
`CollapseMonitor` keeps, per logging window, the mean projection loss and how much of the
sampled instances' boxes, and of the pixels outside them, their masks mark (score > 0.5), and
the spill (pixels marked outside the boxes per box pixel); from `CHECK_FROM` of the schedule on
it names what looks wrong, and from `SHAPE_CHECK_FROM` on also masks that are blobs. The trainer
writes the reasons into `metrics.jsonl` (key "collapse") and the log.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Checks start at this share of the schedule (before it, masks are still being formed).
CHECK_FROM = 0.25
# The projection loss (mean over a logging window) still at this share of its start or above:
# measured runs that learned masks are at 0.1-0.25 of it by a quarter of the schedule, collapsed
# ones at 0.7-0.85 (docs/results.md, "Box-only training over seeds").
PROJECTION_RATIO = 0.5
# The iterations whose projection loss is the start (the mean of the first ones with a mask loss).
START_ITERS = 5
# Masks marking more than this share of the pixels outside their boxes: "masks cover the image".
OUTSIDE_FILL = 0.5
# Masks marking more than this share of their boxes: "masks are filled boxes" (a shape fills 50-80%
# of its box; a mask that fills all of it learned nothing the box did not say). Measured on the
# demo recipe's final checkpoints: 0.62-0.74 where masks beat the boxes, 0.87 and 0.93 where not.
BOX_FILL = 0.9
# Masks marking more pixels outside their boxes than this share of the box area: blobs spilling
# beyond their objects. Measured: 0.04-0.18 where masks beat the boxes, 0.31 and 0.39 where not.
SPILL = 0.25
# The fill and spill checks start later: masks take their shapes late in a box-only schedule (a
# run's spill can still be 0.34 at 60% of it).
SHAPE_CHECK_FROM = 0.75


@dataclass
class CollapseMonitor:
    """Accumulates per-iteration mask statistics; `window()` closes a logging window.

    Values may be 0-d tensors: they are summed as they come and read (one device sync) only when a
    window closes. Its state is three numbers (`state_dict`/`load_state_dict`), saved in `last.pt`
    so that a resumed run compares with the start of the original one (or of its last heal)."""

    iters: int  # the schedule's length
    start_sum: Any = 0.0  # float or 0-d tensor
    start_n: int = 0
    # No window ending before this iteration is judged (after a heal, training/heal.py: the new
    # mask head gets CHECK_FROM of the schedule again before it is judged).
    checks_from: int = 0
    _sums: dict = field(default_factory=dict)
    _n: int = 0

    def update(self, loss_prj: Any, stats: dict[str, Any]) -> None:
        """One iteration: its projection loss and the criterion's mask statistics
        ({"mask_box_fill", "mask_outside_fill"}, empty when no instance had a box-only loss)."""
        if not stats:
            return
        if self.start_n < START_ITERS:
            self.start_sum += loss_prj
            self.start_n += 1
        self._n += 1
        for k, v in {"loss_prj": loss_prj, **stats}.items():
            self._sums[k] = self._sums.get(k, 0.0) + v

    def window(self, iteration: int) -> dict:
        """Close the window ending at `iteration`: {"loss_prj_mean", "mask_box_fill",
        "mask_outside_fill", "mask_spill"} (means over its iterations), plus "collapse": {kind:
        reason} once the checks apply and something looks wrong. Empty when the window had no mask loss."""
        if not self._n:
            return {}
        means = {k: float(v) / self._n for k, v in self._sums.items()}
        self._sums, self._n = {}, 0
        record = {"loss_prj_mean": round(means["loss_prj"], 4),
                  "mask_box_fill": round(means["mask_box_fill"], 4),
                  "mask_outside_fill": round(means["mask_outside_fill"], 4),
                  "mask_spill": round(means["mask_spill"], 4)}
        reasons = collapse_reasons(iteration / self.iters, means["loss_prj"], self.start_prj,
                                   means["mask_box_fill"], means["mask_outside_fill"], means["mask_spill"])
        if reasons and iteration >= self.checks_from:
            record["collapse"] = reasons
        return record

    @property
    def start_prj(self) -> float | None:
        return float(self.start_sum) / self.start_n if self.start_n else None

    def restart(self, checks_from: int) -> None:
        """Forget the open window (a healed mask head, training/heal.py) and judge again from
        iteration `checks_from` on; the start stays the run's own (a healed head is measured
        against where the run began)."""
        self._sums, self._n = {}, 0
        self.checks_from = checks_from

    def state_dict(self) -> dict:
        return {"start_sum": float(self.start_sum), "start_n": self.start_n, "checks_from": self.checks_from}

    def load_state_dict(self, state: dict) -> None:
        self.start_sum, self.start_n = float(state["start_sum"]), int(state["start_n"])
        self.checks_from = int(state.get("checks_from", 0))  # absent in checkpoints before heals


def collapse_reasons(progress: float, prj_mean: float, prj_start: float | None, box_fill: float,
                     outside_fill: float, spill: float = 0.0) -> dict[str, str]:
    """What looks wrong with the mask head at `progress` (0..1 of the schedule), given a window's
    mean projection loss, the start's, the share of box / outside-box pixels the masks mark and
    their spill (outside pixels marked per box pixel): {kind: sentence} with kinds "projection",
    "outside", "box_fill", "spill". Empty before CHECK_FROM of the schedule ("box_fill" and
    "spill" before SHAPE_CHECK_FROM), and when all is well."""
    if progress < CHECK_FROM:
        return {}
    reasons = {}
    if prj_start and prj_mean >= PROJECTION_RATIO * prj_start:
        reasons["projection"] = (f"the projection loss is {prj_mean:.2f}, still {prj_mean / prj_start:.0%} of its "
                                 f"start {prj_start:.2f}")
    if outside_fill > OUTSIDE_FILL:
        reasons["outside"] = f"the masks cover {outside_fill:.0%} of the pixels outside their boxes"
    if progress < SHAPE_CHECK_FROM:
        return reasons
    if box_fill > BOX_FILL:
        reasons["box_fill"] = f"the masks fill {box_fill:.0%} of their boxes (filled boxes, not shapes)"
    if spill > SPILL:
        reasons["spill"] = f"the masks spill beyond their boxes ({spill:.2f} box areas outside them: blobs, not shapes)"
    return reasons


def mask_statistics(mask_logits, box_masks) -> dict[str, Any]:
    """mask_logits [N, 1, H, W] float, box_masks [N, 1, H, W] 0/1 -> {"mask_box_fill": share of
    the box pixels with score > 0.5, "mask_outside_fill": share of the pixels outside the boxes
    with score > 0.5, "mask_spill": pixels outside the boxes with score > 0.5 per box pixel}, over
    all N instances together, as 0-d tensors (no device sync)."""
    on = mask_logits.detach() > 0
    inside = box_masks > 0.5
    n_in, n_out = inside.sum().clamp(min=1), (~inside).sum().clamp(min=1)
    outside_on = (on & ~inside).sum()
    return {"mask_box_fill": (on & inside).sum() / n_in, "mask_outside_fill": outside_on / n_out,
            "mask_spill": outside_on / n_in}


def summary(reasons: dict[str, str], iteration: int) -> str:
    """The warning line for the log."""
    return (f"iteration {iteration}: the mask head does not look like it is learning: " + "; ".join(reasons.values())
            + ". The masks of this run may be no better than its boxes: check `boxinst eval`'s verdict; "
            "saturated masks call for a smaller step (--lr), blobs for a longer --iters or another --seed "
            "(docs/results.md, \"Box-only training over seeds\")")

