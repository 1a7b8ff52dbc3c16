"""FCOS head with centerness and the CondInst controller (SPEC.md, "FCOS head")."""
from __future__ import annotations

import math

import torch
from torch import nn

from boxinst_serve.config import ModelConfig
from boxinst_serve.model.layers import conv_norm_relu


class FCOSHead(nn.Module):
    """Shared head over the FPN levels.

    forward(features: list of [B, fpn_channels, Hl, Wl]) -> four lists over levels:
      cls_logits [B, C, Hl, Wl], bbox_reg [B, 4, Hl, Wl] (l, t, r, b distances in units of the
      level's stride, >= 0), centerness [B, 1, Hl, Wl] (logits), controller [B, P, Hl, Wl]
      (P = cfg.num_controller_params dynamic-head parameters).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c = cfg.head_channels

        def tower() -> nn.Sequential:
            layers = [conv_norm_relu(cfg.fpn_channels if i == 0 else c, c, "gn", cfg.head_gn_groups, cfg.head_conv_bias)
                      for i in range(cfg.head_num_convs)]
            return nn.Sequential(*layers)

        self.cls_tower = tower()
        self.bbox_tower = tower()
        self.cls_logits = nn.Conv2d(c, cfg.num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(c, 4, 3, padding=1)
        self.centerness = nn.Conv2d(c, 1, 3, padding=1)
        self.controller = nn.Conv2d(c, cfg.num_controller_params, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(cfg.num_levels))
        if cfg.bbox_activation not in ("relu", "exp"):
            raise ValueError(f"bbox_activation must be 'relu' or 'exp', got {cfg.bbox_activation!r}")
        self.bbox_activation = cfg.bbox_activation
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        prior = 0.01
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior) / prior))

    def forward(self, features: list[torch.Tensor]):
        cls_logits, bbox_reg, centerness, controller = [], [], [], []
        for level, feat in enumerate(features):
            ct = self.cls_tower(feat)
            bt = self.bbox_tower(feat)
            cls_logits.append(self.cls_logits(ct))
            reg = self.bbox_pred(bt) * self.scales[level]
            # exp is clamped at e^10 strides so that a diverging step cannot make it infinite
            bbox_reg.append(torch.relu(reg) if self.bbox_activation == "relu" else torch.exp(reg.clamp(max=10.0)))
            centerness.append(self.centerness(bt))
            controller.append(self.controller(bt))
        return cls_logits, bbox_reg, centerness, controller
