"""Inference post-processing to the padded network contract (DESIGN.md, "Network contract").

Pure functions on `HeadOutputs`; `InferenceModel` wraps CondInst + `detect` as the module that
engines run and that export traces.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import batched_nms

from boxinst_serve.config import OUTPUT_NAMES, ModelConfig
from boxinst_serve.model.condinst import CondInst, HeadOutputs
from boxinst_serve.model.dynamic_head import dynamic_mask_logits
from boxinst_serve.model.layers import compute_locations


def flatten_outputs(out: HeadOutputs, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Concatenate the per-level maps over all locations L = sum(Hl * Wl).

    Returns cls_logits [B, L, C], bbox_reg [B, L, 4] (stride units), centerness [B, L],
    controller [B, L, P], locations [L, 2] (x, y input pixels), levels [L] long, strides [L] float.
    """
    def cat(maps: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([m.flatten(2).permute(0, 2, 1) for m in maps], dim=1)

    locations, levels, strides = [], [], []
    for level, (m, stride) in enumerate(zip(out.cls_logits, cfg.strides)):
        h, w = m.shape[-2:]
        loc = compute_locations(h, w, stride, m.device)
        locations.append(loc)
        levels.append(torch.full((loc.shape[0],), level, dtype=torch.long, device=m.device))
        strides.append(torch.full((loc.shape[0],), float(stride), device=m.device))
    return {
        "cls_logits": cat(out.cls_logits),
        "bbox_reg": cat(out.bbox_reg),
        "centerness": cat(out.centerness).squeeze(2),
        "controller": cat(out.controller),
        "locations": torch.cat(locations),
        "levels": torch.cat(levels),
        "strides": torch.cat(strides),
    }


def _candidates(flat: dict[str, torch.Tensor], b: int, cfg: ModelConfig, image_hw: tuple[int, int]):
    """Thresholded, per-level top-k candidates of image b.
    Returns (boxes [M, 4], scores [M], classes [M], locations [M, 2], levels [M], params [M, P])."""
    cls_prob = flat["cls_logits"][b].sigmoid()  # [L, C]
    ctr = flat["centerness"][b].sigmoid()  # [L]
    tested = cls_prob * ctr[:, None] if cfg.thresh_with_ctr else cls_prob
    num_classes = cls_prob.shape[1]
    picked = []
    for level in range(cfg.num_levels):
        idx_level = (flat["levels"] == level).nonzero().squeeze(1)
        s = tested[idx_level].flatten()
        k = min(cfg.pre_nms_topk, s.numel())
        top_s, top_i = s.topk(k)
        top_i = top_i[top_s > cfg.score_thresh]
        picked.append(idx_level[top_i // num_classes] * num_classes + top_i % num_classes)
    flat_idx = torch.cat(picked)
    loc_idx, classes = flat_idx // num_classes, flat_idx % num_classes
    locations = flat["locations"][loc_idx]
    reg = flat["bbox_reg"][b, loc_idx] * flat["strides"][loc_idx, None]
    boxes = torch.stack([locations[:, 0] - reg[:, 0], locations[:, 1] - reg[:, 1],
                         locations[:, 0] + reg[:, 2], locations[:, 1] + reg[:, 3]], dim=1)
    h, w = image_hw
    boxes = torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h),
                         boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)], dim=1)
    scores = torch.sqrt(cls_prob[loc_idx, classes] * ctr[loc_idx])
    return boxes, scores, classes, locations, flat["levels"][loc_idx], flat["controller"][b, loc_idx]


def detect(out: HeadOutputs, cfg: ModelConfig, image_hw: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Decode, class-aware NMS, masks for kept detections, padded to K = cfg.max_detections.

    image_hw: (H, W) of the padded input. Returns the contract outputs:
    num_detections int32 [B], boxes float [B, K, 4], scores float [B, K], classes int32 [B, K],
    masks uint8 [B, K, H/4, W/4] (probability x 255).
    """
    flat = flatten_outputs(out, cfg)
    bsz = flat["cls_logits"].shape[0]
    k_max = cfg.max_detections
    kept = []
    for b in range(bsz):
        boxes, scores, classes, locs, levels, params = _candidates(flat, b, cfg, image_hw)
        keep = batched_nms(boxes, scores, classes, cfg.nms_iou)[:k_max]
        kept.append((boxes[keep], scores[keep], classes[keep], locs[keep], levels[keep], params[keep]))

    mh = out.mask_feats.shape[-2] * cfg.mask_branch_stride // cfg.mask_out_stride
    mw = out.mask_feats.shape[-1] * cfg.mask_branch_stride // cfg.mask_out_stride
    device = out.mask_feats.device
    result = {
        "num_detections": torch.zeros(bsz, dtype=torch.int32, device=device),
        "boxes": torch.zeros(bsz, k_max, 4, device=device),
        "scores": torch.zeros(bsz, k_max, device=device),
        "classes": torch.zeros(bsz, k_max, dtype=torch.int32, device=device),
        "masks": torch.zeros(bsz, k_max, mh, mw, dtype=torch.uint8, device=device),
    }
    image_index = torch.cat([torch.full((k[0].shape[0],), b, dtype=torch.long, device=device)
                             for b, k in enumerate(kept)])
    params = torch.cat([k[5] for k in kept])
    if params.shape[0] > 0:
        logits = dynamic_mask_logits(out.mask_feats, params, torch.cat([k[3] for k in kept]),
                                     torch.cat([k[4] for k in kept]), image_index, cfg)
        probs = (logits.sigmoid().squeeze(1).float() * 255.0 + 0.5).to(torch.uint8)
    start = 0
    for b, (boxes, scores, classes, _, _, _) in enumerate(kept):
        n = boxes.shape[0]
        result["num_detections"][b] = n
        result["boxes"][b, :n] = boxes
        result["scores"][b, :n] = scores
        result["classes"][b, :n] = classes.to(torch.int32)
        if n:
            result["masks"][b, :n] = probs[start:start + n]
        start += n
    return result


class InferenceModel(nn.Module):
    """CondInst + detect: forward(images uint8 [B, H, W, 3]) -> tuple in OUTPUT_NAMES order."""

    def __init__(self, model: CondInst):
        super().__init__()
        self.model = model
        self.cfg = model.cfg

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(images)
        result = detect(out, self.cfg, (images.shape[1], images.shape[2]))
        return tuple(result[name] for name in OUTPUT_NAMES)
