"""FCOS training targets (SPEC.md, "FCOS training targets and losses") and the CondInst choice
of which foreground locations get a mask loss. Pure functions."""
from __future__ import annotations

import torch

from boxinst_serve.config import ModelConfig

INF = 1e8


def level_ranges(cfg: ModelConfig, device=None) -> torch.Tensor:
    """[num_levels, 2] (lower, upper) bounds of the max regression distance per level."""
    bounds = [-1.0, *cfg.level_size_bounds, INF]
    return torch.tensor([[bounds[i], bounds[i + 1]] for i in range(cfg.num_levels)], device=device)


def fcos_targets(
    locations: torch.Tensor,
    levels: torch.Tensor,
    strides: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    cfg: ModelConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Assign every location of one image to a GT box or to background.

    locations: [L, 2] (x, y); levels: [L] long; strides: [L] float; gt_boxes: [G, 4] xyxy;
    gt_labels: [G] long in 0..C-1.
    Returns labels [L] long (C = background), reg_targets [L, 4] (l, t, r, b in stride units),
    gt_index [L] long (-1 for background).
    """
    num_loc = locations.shape[0]
    device = locations.device
    if gt_boxes.shape[0] == 0:
        return (torch.full((num_loc,), cfg.num_classes, dtype=torch.long, device=device),
                torch.zeros(num_loc, 4, device=device),
                torch.full((num_loc,), -1, dtype=torch.long, device=device))
    xs, ys = locations[:, 0, None], locations[:, 1, None]  # [L, 1]
    x0, y0, x1, y1 = gt_boxes.unbind(1)  # [G]
    ltrb = torch.stack([xs - x0, ys - y0, x1 - xs, y1 - ys], dim=2)  # [L, G, 4]

    # Centre sampling: inside a (radius * stride) square around the box centre, clipped to the box.
    radius = strides[:, None] * cfg.center_sample_radius  # [L, 1]
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    cb_x0 = torch.maximum(cx - radius, x0)
    cb_y0 = torch.maximum(cy - radius, y0)
    cb_x1 = torch.minimum(cx + radius, x1)
    cb_y1 = torch.minimum(cy + radius, y1)
    in_center = (xs > cb_x0) & (ys > cb_y0) & (xs < cb_x1) & (ys < cb_y1)  # [L, G]

    max_reg = ltrb.max(dim=2).values
    ranges = level_ranges(cfg, device)[levels]  # [L, 2]
    in_level = (max_reg >= ranges[:, :1]) & (max_reg <= ranges[:, 1:])

    areas = ((x1 - x0) * (y1 - y0))[None, :].expand(num_loc, -1).clone()
    areas[~(in_center & in_level)] = INF
    min_area, gt_index = areas.min(dim=1)
    is_bg = min_area == INF
    labels = gt_labels[gt_index].clone()
    labels[is_bg] = cfg.num_classes
    reg = ltrb[torch.arange(num_loc, device=device), gt_index] / strides[:, None]
    gt_index = gt_index.clone()
    gt_index[is_bg] = -1
    return labels, reg, gt_index


def centerness_target(reg_targets: torch.Tensor) -> torch.Tensor:
    """reg_targets [M, 4] (l, t, r, b) -> [M]: sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b))."""
    lr = reg_targets[:, [0, 2]]
    tb = reg_targets[:, [1, 3]]
    ratio = (lr.min(dim=1).values / lr.max(dim=1).values.clamp(min=1e-6)) * \
            (tb.min(dim=1).values / tb.max(dim=1).values.clamp(min=1e-6))
    return torch.sqrt(ratio.clamp(min=0))


def sample_mask_instances(gt_index: torch.Tensor, quality: torch.Tensor, topk_per_image: int) -> torch.Tensor:
    """CondInst's TOPK_PROPOSALS_PER_IM: pick foreground locations of one image for the mask loss.

    gt_index: [M] long GT id of each foreground location; quality: [M] predicted
    cls_prob * centerness (no grad needed). For each GT keep the max(topk // num_gt, 1) locations of
    highest quality. Returns indices into the M locations (sorted). topk_per_image <= 0 keeps all.
    """
    if topk_per_image <= 0 or gt_index.numel() == 0:
        return torch.arange(gt_index.numel(), device=gt_index.device)
    gts = torch.unique(gt_index)
    per_gt = max(topk_per_image // len(gts), 1)
    keep = []
    for g in gts:
        idx = (gt_index == g).nonzero().squeeze(1)
        if idx.numel() > per_gt:
            idx = idx[quality[idx].topk(per_gt).indices]
        keep.append(idx)
    return torch.sort(torch.cat(keep)).values
