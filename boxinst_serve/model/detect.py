"""Inference post-processing to the padded network contract (docs/architecture.md, "Network contract").

Pure functions on `HeadOutputs`; `InferenceModel` wraps CondInst + `detect` as the module that
engines run and that export traces.
"""
from __future__ import annotations

import torch
from torch import nn

from boxinst_serve.config import OUTPUT_NAMES, ModelConfig
from boxinst_serve.model.condinst import CondInst, HeadOutputs
from boxinst_serve.model.dynamic_head import dynamic_mask_logits
from boxinst_serve.model.layers import compute_locations
from boxinst_serve.model.nms import batched_nms


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


def _level_candidates(out: HeadOutputs, cfg: ModelConfig, level: int, image_hw: tuple[int, int]):
    """Top-k candidates of one level, per image, with fixed-rank tensors (export-friendly).

    Returns boxes [B, k, 4], nms_scores [B, k] (sqrt(cls * ctr), -1 where the tested score is
    <= score_thresh), classes [B, k], locations [B, k, 2], levels [B, k], params [B, k, P]."""
    cls = out.cls_logits[level]
    bsz, num_classes, h, w = cls.shape
    stride = cfg.strides[level]
    cls_prob = cls.sigmoid().flatten(2).permute(0, 2, 1)  # [B, hw, C]
    ctr = out.centerness[level].sigmoid().flatten(1)  # [B, hw]
    tested = cls_prob * ctr[:, :, None] if cfg.thresh_with_ctr else cls_prob
    k = min(cfg.pre_nms_topk, h * w * num_classes)
    top_tested, top_i = tested.flatten(1).topk(k, dim=1)  # [B, k]
    loc_i = top_i // num_classes
    classes = top_i % num_classes
    locations = compute_locations(h, w, stride, cls.device)[loc_i]  # [B, k, 2]
    reg = torch.gather(out.bbox_reg[level].flatten(2).permute(0, 2, 1), 1, loc_i[:, :, None].expand(-1, -1, 4))
    reg = reg * stride
    boxes = torch.stack([locations[..., 0] - reg[..., 0], locations[..., 1] - reg[..., 1],
                         locations[..., 0] + reg[..., 2], locations[..., 1] + reg[..., 3]], dim=2)
    if cfg.clip_boxes_before_nms:
        img_h, img_w = image_hw
        boxes = torch.stack([boxes[..., 0].clamp(min=0, max=img_w), boxes[..., 1].clamp(min=0, max=img_h),
                             boxes[..., 2].clamp(min=0, max=img_w), boxes[..., 3].clamp(min=0, max=img_h)], dim=2)
    cls_top = torch.gather(cls_prob.flatten(1), 1, top_i)
    ctr_top = torch.gather(ctr, 1, loc_i)
    scores = torch.sqrt(cls_top * ctr_top)
    if not cfg.thresh_with_ctr:
        top_tested = cls_top
    nms_scores = torch.where(top_tested > cfg.score_thresh, scores, torch.full_like(scores, -1.0))
    ctrl = out.controller[level].flatten(2).permute(0, 2, 1)  # [B, hw, P]
    params = torch.gather(ctrl, 1, loc_i[:, :, None].expand(-1, -1, ctrl.shape[2]))
    levels = torch.full_like(loc_i, level)
    return boxes, nms_scores, classes, locations, levels, params


def select_detections(out: HeadOutputs, cfg: ModelConfig, image_hw: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Decode every level, class-aware NMS, keep the top K = cfg.max_detections (padded).

    Fixed-rank tensors, no per-image Python loops except inside the NMS operator (export-safe).
    image_hw: (H, W) of the padded input. Returns valid bool [B, K], boxes float [B, K, 4],
    scores [B, K], classes long [B, K], locations [B, K, 2], levels long [B, K] and the
    controller's dynamic-head parameters params [B, K, P] of the kept detections."""
    bsz = out.mask_feats.shape[0]
    k_max = cfg.max_detections
    device = out.mask_feats.device
    parts = [_level_candidates(out, cfg, level, image_hw) for level in range(cfg.num_levels)]
    # K dummy candidates (never selected) so that top-K below always has K columns to take.
    p = cfg.num_controller_params
    dummy = (torch.zeros(bsz, k_max, 4, device=device), torch.full((bsz, k_max), -1.0, device=device),
             torch.zeros(bsz, k_max, dtype=torch.long, device=device), torch.zeros(bsz, k_max, 2, device=device),
             torch.zeros(bsz, k_max, dtype=torch.long, device=device),
             torch.zeros(bsz, k_max, p, device=device, dtype=parts[0][5].dtype))
    boxes, nms_scores, classes, locations, levels, params = (torch.cat(t, dim=1) for t in zip(*parts, dummy))

    # Class-aware NMS: shift each class's boxes by a multiple of an extent larger than any box
    # (a tensor, not the image size: a Python number would freeze the exported input shape).
    # Unclipped boxes can reach below 0: measured from the lowest coordinate, classes never meet.
    low = boxes.amin(dim=(1, 2), keepdim=True) if not cfg.clip_boxes_before_nms else boxes.new_zeros(bsz, 1, 1)
    extent = boxes.amax(dim=(1, 2), keepdim=True) - low + 1.0  # [B, 1, 1]
    offset = classes.to(boxes.dtype)[:, :, None] * extent - low
    selected = batched_nms(boxes + offset, nms_scores, cfg.nms_iou, k_max)  # [S, 2]
    kept_scores = torch.full_like(nms_scores, -1.0)
    kept_scores[selected[:, 0], selected[:, 1]] = nms_scores[selected[:, 0], selected[:, 1]]
    top_scores, top_i = kept_scores.topk(k_max, dim=1)  # [B, K], descending

    def take(t: torch.Tensor) -> torch.Tensor:
        index = top_i.reshape(bsz, k_max, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:])
        return torch.gather(t, 1, index)

    return {"valid": top_scores > 0, "boxes": take(boxes), "scores": top_scores, "classes": take(classes),
            "locations": take(locations), "levels": take(levels), "params": take(params)}


def detection_masks(mask_feats: torch.Tensor, sel: dict[str, torch.Tensor], cfg: ModelConfig) -> torch.Tensor:
    """Dynamic mask heads of the selected detections: mask_feats [B, C, H/8, W/8] (mask branch),
    sel from select_detections -> uint8 [B, K, H/4, W/4] probability x 255, zero for padding rows."""
    bsz, k_max, p = sel["params"].shape
    image_index = torch.arange(bsz, device=mask_feats.device).repeat_interleave(k_max)
    logits = dynamic_mask_logits(mask_feats, sel["params"].reshape(bsz * k_max, p),
                                 sel["locations"].reshape(bsz * k_max, 2), sel["levels"].reshape(bsz * k_max),
                                 image_index, cfg)
    probs = logits.sigmoid().float().reshape(bsz, k_max, logits.shape[2], logits.shape[3])
    vf = sel["valid"].to(probs.dtype)
    return (probs * vf[:, :, None, None] * 255.0 + 0.5).to(torch.uint8)


def contract_outputs(sel: dict[str, torch.Tensor], masks: torch.Tensor) -> dict[str, torch.Tensor]:
    """The network contract's outputs (docs/architecture.md) from a selection and its masks."""
    valid = sel["valid"]
    vf = valid.to(sel["boxes"].dtype)
    return {
        "num_detections": valid.sum(dim=1).to(torch.int32),
        "boxes": sel["boxes"] * vf[:, :, None],
        "scores": sel["scores"].clamp(min=0) * vf,
        "classes": (sel["classes"] * valid.long()).to(torch.int32),
        "masks": masks,
    }


def detect(out: HeadOutputs, cfg: ModelConfig, image_hw: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Decode, class-aware NMS, masks for the kept detections, padded to K = cfg.max_detections.

    One implementation for PyTorch and the exported graph. image_hw: (H, W) of the padded input.
    Returns the contract outputs: num_detections int32 [B], boxes float [B, K, 4],
    scores float [B, K], classes int32 [B, K], masks uint8 [B, K, H/4, W/4] (probability x 255).
    """
    sel = select_detections(out, cfg, image_hw)
    return contract_outputs(sel, detection_masks(out.mask_feats, sel, cfg))


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
