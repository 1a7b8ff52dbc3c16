"""Drawing instances on images (overlays for `boxinst segment`, the demo and videos)."""
from __future__ import annotations

import cv2
import numpy as np

from boxinst_serve.results import Instances


def palette(i: int) -> tuple[int, int, int]:
    """A distinct, stable RGB colour per index (golden-ratio hue steps)."""
    hue = int((i * 0.618033988749895 % 1.0) * 180)
    hsv = np.uint8([[[hue, 200, 255]]])
    r, g, b = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]
    return int(r), int(g), int(b)


def displayed(inst: Instances, score_thresh: float = 0.3, overlap_iou: float = 0.7) -> list[int]:
    """Indices worth drawing: score >= score_thresh, and not a near-copy (mask IoU > overlap_iou)
    of a higher-scoring drawn instance. Class-aware NMS keeps one detection per class at a place,
    which is right for AP but clutters a picture with the same object under several labels."""
    masks = inst.masks
    kept: list[int] = []
    for i in np.argsort(-inst.scores):
        if inst.scores[i] < score_thresh:
            break
        m = masks[i]
        if any((m & masks[j]).sum() > overlap_iou * max((m | masks[j]).sum(), 1) for j in kept):
            continue
        kept.append(int(i))
    return kept


def draw_instances(image: np.ndarray, inst: Instances, score_thresh: float = 0.3, alpha: float = 0.5,
                   draw_boxes: bool = True) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> a copy with masks (filled, alpha-blended, outlined), boxes and labels
    of the `displayed` instances."""
    out = image.copy()
    keep = displayed(inst, score_thresh)
    masks = inst.masks
    for rank, i in enumerate(keep):
        color = np.array(palette(rank), dtype=np.float32)
        m = masks[i]
        out[m] = (out[m].astype(np.float32) * (1 - alpha) + color * alpha).astype(np.uint8)
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, tuple(int(c) for c in color), 1)
        if draw_boxes:
            x0, y0, x1, y1 = (int(round(v)) for v in inst.boxes[i])
            cv2.rectangle(out, (x0, y0), (x1, y1), tuple(int(c) for c in color), 1)
            label = f"{inst.class_name(i)} {inst.scores[i]:.2f}"
            cv2.putText(out, label, (x0, max(10, y0 - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1,
                        cv2.LINE_AA)
    return out
