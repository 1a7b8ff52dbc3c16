"""COCO-format helpers shared by training, evaluation and `boxinst annotate` (numpy and
pycocotools only: no torch): a segmentation in any COCO encoding to RLE, mask IoU, and matching
ground-truth objects to detections by box IoU."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from pycocotools import mask as mask_utils


def segmentation_to_rle(seg: Any, height: int, width: int) -> dict[str, Any] | None:
    """A COCO segmentation -> compressed RLE (bytes counts), or None when it holds no shape.

    seg: polygons (list of [x0, y0, x1, y1, ...]; those with fewer than 3 points are ignored), RLE
    with str or bytes counts, or uncompressed RLE (counts a list). height/width: the image's, used
    for polygons (an RLE carries its own size)."""
    if not seg:
        return None
    if isinstance(seg, list):
        polys = [p for p in seg if isinstance(p, list) and len(p) >= 6]
        return mask_utils.merge(mask_utils.frPyObjects(polys, height, width)) if polys else None
    if isinstance(seg.get("counts"), list):
        return mask_utils.frPyObjects(seg, *seg["size"])
    counts = seg["counts"]
    return {"size": list(seg["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def mask_iou(a: dict[str, Any], b: dict[str, Any]) -> float:
    """IoU of two RLEs (as returned by segmentation_to_rle, or with str counts)."""
    a, b = (dict(r, counts=r["counts"].encode("ascii")) if isinstance(r["counts"], str) else r for r in (a, b))
    return float(mask_utils.iou([a], [b], [0])[0][0])


def box_ious(boxes_a: np.ndarray | Sequence, boxes_b: np.ndarray | Sequence) -> np.ndarray:
    """COCO xywh boxes [N, 4] and [M, 4] -> IoU [N, M] (pycocotools; 0 for empty boxes)."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float64)
    return np.asarray(mask_utils.iou(a, b, [0] * len(b)), dtype=np.float64).reshape(len(a), len(b))


def match_to_detections(gt_boxes: np.ndarray | Sequence, det_boxes: np.ndarray | Sequence,
                        iou_thresh: float = 0.5, gt_classes: Sequence | None = None,
                        det_classes: Sequence | None = None) -> list[int | None]:
    """For each ground-truth box (xywh [N, 4]), the index of the detection (xywh [M, 4]) with the
    highest box IoU >= iou_thresh, or None. With gt_classes [N] and det_classes [M], a detection of
    the object's class is preferred when one reaches the threshold (a gt class of None: any)."""
    ious = box_ious(gt_boxes, det_boxes)
    matches: list[int | None] = []
    for g, row in enumerate(ious):
        ok = row >= iou_thresh
        if not ok.any():
            matches.append(None)
            continue
        if gt_classes is not None and det_classes is not None and gt_classes[g] is not None:
            same = ok & (np.asarray(det_classes) == gt_classes[g])
            if same.any():
                ok = same
        matches.append(int(np.argmax(np.where(ok, row, -1.0))))
    return matches
