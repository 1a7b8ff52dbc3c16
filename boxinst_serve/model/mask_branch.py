"""CondInst mask branch: P3-P5 fused at stride 8 (SPEC.md, "Mask branch")."""
from __future__ import annotations

import torch
from torch import nn

from boxinst_serve.config import ModelConfig
from boxinst_serve.model.layers import aligned_bilinear, conv_norm_relu


class MaskBranch(nn.Module):
    """forward(features: [P3, P4, P5, ...] each [B, fpn_channels, H/s, W/s])
    -> mask features [B, mask_branch_out_channels, H/8, W/8]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c = cfg.mask_branch_channels
        self.refine = nn.ModuleList([conv_norm_relu(cfg.fpn_channels, c, "bn") for _ in range(3)])
        self.tower = nn.Sequential(
            *[conv_norm_relu(c, c, "bn") for _ in range(cfg.mask_branch_num_convs)],
            nn.Conv2d(c, cfg.mask_branch_out_channels, 1),
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.refine[0](features[0])
        for i in (1, 2):
            y = self.refine[i](features[i])
            # P4/P5 maps are exactly 2x/4x smaller because inputs are padded to a multiple of 32.
            x = x + aligned_bilinear(y, 2**i)
        return self.tower(x)
