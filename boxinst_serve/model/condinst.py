"""The CondInst module: uint8 images in, raw head outputs out. Targets, losses and
post-processing live in their own functions (training/, boxinst_serve/model/detect.py)."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from boxinst_serve.config import ModelConfig
from boxinst_serve.model.backbone import BackboneFPN
from boxinst_serve.model.fcos_head import FCOSHead
from boxinst_serve.model.mask_branch import MaskBranch


class HeadOutputs(NamedTuple):
    """Raw outputs. Per-level lists (P3..P7) of [B, *, Hl, Wl]; mask_feats at stride 8."""

    cls_logits: list[torch.Tensor]  # [B, C, Hl, Wl]
    bbox_reg: list[torch.Tensor]  # [B, 4, Hl, Wl], distances in stride units
    centerness: list[torch.Tensor]  # [B, 1, Hl, Wl] logits
    controller: list[torch.Tensor]  # [B, P, Hl, Wl]
    mask_feats: torch.Tensor  # [B, Cm, H/8, W/8]


class CondInst(nn.Module):
    """forward(images: uint8 [B, H, W, 3] RGB, H and W multiples of 32) -> HeadOutputs.

    Normalisation (ImageNet mean/std of cfg) happens inside, so exported graphs take raw pixels.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = BackboneFPN(cfg)
        self.head = FCOSHead(cfg)
        self.mask_branch = MaskBranch(cfg)
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).view(1, 3, 1, 1), persistent=False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, H, W, 3] -> float [B, 3, H, W] normalised, channels-last memory."""
        x = images.permute(0, 3, 1, 2).to(self.pixel_mean.dtype)
        return (x - self.pixel_mean) / self.pixel_std

    def forward(self, images: torch.Tensor) -> HeadOutputs:
        features = self.backbone(self.normalize(images))
        cls_logits, bbox_reg, centerness, controller = self.head(features)
        mask_feats = self.mask_branch(features)
        return HeadOutputs(cls_logits, bbox_reg, centerness, controller, mask_feats)


def build_model(cfg: ModelConfig) -> CondInst:
    return CondInst(cfg)
