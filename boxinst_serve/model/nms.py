"""Batched, class-aware NMS as one custom operator: torchvision's NMS when PyTorch runs it, ONNX
`NonMaxSuppression` when the graph is exported (see export/onnx.py), so both paths share the
surrounding post-processing code."""
from __future__ import annotations

import torch
from torchvision.ops import nms


@torch.library.custom_op("boxinst::batched_nms", mutates_args=())
def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
                max_per_image: int) -> torch.Tensor:
    """boxes: [B, M, 4] x0, y0, x1, y1 (class offsets already added so that boxes of different
    classes never overlap); scores: [B, M], candidates with score <= 0 are ignored.
    Returns selected [S, 2] int64 rows (image index, candidate index), at most max_per_image per
    image, each image's rows in descending score order."""
    rows = []
    for b in range(boxes.shape[0]):
        idx = (scores[b] > 0).nonzero().squeeze(1)
        keep = idx[nms(boxes[b, idx], scores[b, idx], iou_threshold)[:max_per_image]]
        rows.append(torch.stack([torch.full_like(keep, b), keep], dim=1))
    return torch.cat(rows) if rows else torch.zeros(0, 2, dtype=torch.int64, device=boxes.device)


@batched_nms.register_fake
def _batched_nms_fake(boxes, scores, iou_threshold, max_per_image):
    n = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((n, 2), dtype=torch.int64)
