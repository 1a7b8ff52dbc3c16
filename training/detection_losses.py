"""FCOS detection losses (SPEC.md): sigmoid focal, GIoU weighted by centerness, centerness BCE.
Built on torchvision.ops; pure functions."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss


def focal_loss(cls_logits: torch.Tensor, labels: torch.Tensor, num_pos_avg: float,
               alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """cls_logits [M, C]; labels [M] long with C = background. Sum / num_pos_avg."""
    num_classes = cls_logits.shape[1]
    target = F.one_hot(labels, num_classes + 1)[:, :num_classes].to(cls_logits.dtype)
    return sigmoid_focal_loss(cls_logits, target, alpha=alpha, gamma=gamma, reduction="sum") / num_pos_avg


def ltrb_to_boxes(ltrb: torch.Tensor) -> torch.Tensor:
    """[M, 4] distances (l, t, r, b) -> boxes around the origin (-l, -t, r, b)."""
    return torch.stack([-ltrb[:, 0], -ltrb[:, 1], ltrb[:, 2], ltrb[:, 3]], dim=1)


def giou_loss(pred_ltrb: torch.Tensor, target_ltrb: torch.Tensor, weights: torch.Tensor,
              weight_sum_avg: float) -> torch.Tensor:
    """pred/target [M, 4] distances; weights [M] (centerness targets). Weighted sum / weight_sum_avg."""
    losses = generalized_box_iou_loss(ltrb_to_boxes(pred_ltrb), ltrb_to_boxes(target_ltrb), reduction="none")
    return (losses * weights).sum() / weight_sum_avg


def centerness_loss(ctr_logits: torch.Tensor, ctr_targets: torch.Tensor, num_pos_avg: float) -> torch.Tensor:
    """BCE-with-logits over foreground locations, sum / num_pos_avg. Inputs [M]."""
    return F.binary_cross_entropy_with_logits(ctr_logits, ctr_targets, reduction="sum") / num_pos_avg
