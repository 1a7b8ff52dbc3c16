"""Comparing two detectors' outputs on one image, detection by detection, with tolerances and
the float-noise exceptions that a correct implementation can still meet (shared by the AdelaiDet
oracle test and the unchanged-outputs test)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Detections:
    """boxes [N, 4] x0, y0, x1, y1; scores [N]; classes [N]; masks bool [N, H, W] (or None)."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    masks: np.ndarray | None = None


@dataclass
class ParityReport:
    matched: list[tuple[int, int]] = field(default_factory=list)  # (expected index, actual index)
    min_mask_iou: float = 1.0
    tolerated: list[str] = field(default_factory=list)  # float-noise cases, named
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks; two empty masks agree (1.0)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def compare(expected: Detections, actual: Detections, box_tol: float = 0.5, score_tol: float = 1e-3,
            min_mask_iou: float = 0.98, score_floor: float | None = None, cap: int | None = None,
            noise: float = 1e-4) -> ParityReport:
    """Match each expected detection to one actual detection of the same class, every box
    coordinate within `box_tol` and the score within `score_tol` (greedy, by expected score), then
    check the matched masks' IoU. A detection left unmatched on either side is tolerated, and
    named, only where the decision is float noise: its score within `noise` of `score_floor` (the
    threshold's final score, sqrt(0.05) for AdelaiDet), or a tie at the `cap`-detection limit (its
    score within `noise` of the lowest kept score of a capped list)."""
    report = ParityReport()
    used = np.zeros(len(actual.scores), dtype=bool)
    for i in np.argsort(-expected.scores, kind="stable"):
        ok = (~used & (actual.classes == expected.classes[i])
              & (np.abs(actual.boxes - expected.boxes[i]).max(axis=1) <= box_tol)
              & (np.abs(actual.scores - expected.scores[i]) <= score_tol))
        if not ok.any():
            _unmatched(report, "expected", int(i), expected, score_floor, cap, noise)
            continue
        j = int(np.flatnonzero(ok)[np.argmin(np.abs(actual.scores[ok] - expected.scores[i]))])
        used[j] = True
        report.matched.append((int(i), j))
        if expected.masks is not None and actual.masks is not None:
            iou = mask_iou(expected.masks[i], actual.masks[j])
            report.min_mask_iou = min(report.min_mask_iou, iou)
            if iou < min_mask_iou:
                report.failures.append(f"expected detection {i} (score {expected.scores[i]:.6f}): mask IoU {iou:.4f} "
                                       f"< {min_mask_iou}")
    for j in np.flatnonzero(~used):
        _unmatched(report, "actual", int(j), actual, score_floor, cap, noise)
    return report


def _unmatched(report: ParityReport, side: str, index: int, dets: Detections, score_floor: float | None,
               cap: int | None, noise: float) -> None:
    score = float(dets.scores[index])
    what = (f"{side} detection {index} (class {int(dets.classes[index])}, score {score:.6f}, box "
            f"{np.round(dets.boxes[index], 2).tolist()}) has no counterpart")
    if score_floor is not None and abs(score - score_floor) <= noise:
        report.tolerated.append(f"{what}: its score is within {noise:g} of the threshold's {score_floor:.6f}")
    elif cap is not None and len(dets.scores) >= cap and score - float(dets.scores.min()) <= noise:
        report.tolerated.append(f"{what}: a tie at the {cap}-detection cap")
    else:
        report.failures.append(what)
