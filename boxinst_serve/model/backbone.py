"""ResNet backbone (torchvision) with FPN P3-P7 (SPEC.md, "Backbone" and "FPN")."""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7

from boxinst_serve.config import ModelConfig

_RESNETS = {18: resnet.resnet18, 34: resnet.resnet34, 50: resnet.resnet50, 101: resnet.resnet101}
# Stages in torchvision's naming; freeze_at=k freezes the first k of them.
_STAGES = ("conv1", "layer1", "layer2", "layer3", "layer4")


def build_resnet(cfg: ModelConfig) -> nn.Module:
    """Plain torchvision ResNet of `cfg.backbone_depth`, with frozen or trainable BatchNorm, and
    the stride of each stage's first bottleneck in its 1x1 conv where `cfg.stride_in_1x1`."""
    if cfg.backbone_depth not in _RESNETS:
        raise ValueError(f"backbone_depth must be one of {sorted(_RESNETS)}, got {cfg.backbone_depth}")
    if cfg.backbone_norm not in ("frozen_bn", "bn"):
        raise ValueError(f"backbone_norm must be 'frozen_bn' or 'bn', got {cfg.backbone_norm!r}")
    norm = FrozenBatchNorm2d if cfg.backbone_norm == "frozen_bn" else nn.BatchNorm2d
    body = _RESNETS[cfg.backbone_depth](weights=None, norm_layer=norm)
    if cfg.stride_in_1x1:
        if cfg.backbone_depth < 50:
            raise ValueError("stride_in_1x1 applies to bottleneck ResNets (depth 50/101), not depth "
                             f"{cfg.backbone_depth}")
        # MSRA/detectron2 ResNets downsample in the first 1x1 conv of res3-res5; torchvision in the 3x3.
        for layer in (body.layer2, body.layer3, body.layer4):
            layer[0].conv1.stride, layer[0].conv2.stride = (2, 2), (1, 1)
    return body


class BackboneFPN(nn.Module):
    """ResNet C3-C5 -> FPN P3-P5, P6 from P5, P7 from ReLU(P6).

    forward(x: [B, 3, H, W] float, normalised) -> list of 5 tensors [B, fpn_channels, H/s, W/s]
    for s in cfg.strides (8, 16, 32, 64, 128).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        body = build_resnet(cfg)
        for name, module in body.named_children():
            stage = "conv1" if name in ("conv1", "bn1") else name
            if stage in _STAGES[: cfg.freeze_at]:
                module.requires_grad_(False)
        self.body = IntermediateLayerGetter(body, {"layer2": "c3", "layer3": "c4", "layer4": "c5"})
        c5 = body.fc.in_features
        in_channels = [c5 // 4, c5 // 2, c5]
        self.fpn = FeaturePyramidNetwork(
            in_channels, cfg.fpn_channels, extra_blocks=LastLevelP6P7(cfg.fpn_channels, cfg.fpn_channels)
        )

    def load_backbone_weights(self, state_dict: dict[str, torch.Tensor]) -> list[str]:
        """Load torchvision ImageNet ResNet weights (a state dict); returns the missing keys."""
        state = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
        result = self.body.load_state_dict(state, strict=False)
        return list(result.missing_keys)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.body(x)
        out = self.fpn(OrderedDict(feats))
        return list(out.values())
