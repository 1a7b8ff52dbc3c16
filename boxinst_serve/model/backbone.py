"""Backbone (a torchvision ResNet, or for `nano` a mobile network) with FPN P3-P7 (SPEC.md,
"Backbone" and "FPN")."""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models import mobilenet_v3_large, regnet_x_400mf, resnet, shufflenet_v2_x1_0
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7

from boxinst_serve.config import ModelConfig

_RESNETS = {18: resnet.resnet18, 34: resnet.resnet34, 50: resnet.resnet50, 101: resnet.resnet101}
# Stages in torchvision's naming; freeze_at=k freezes the first k of them.
_STAGES = ("conv1", "layer1", "layer2", "layer3", "layer4")
# Backbones besides the ResNets (cfg.backbone): torchvision builder, the children that give C3-C5
# (strides 8, 16, 32) and their channels. mobilenet_v3_large's C5 is block 15 (160 channels), before
# its 960-channel 1x1 conv, which only feeds the classifier.
_MOBILE = {
    "mobilenet_v3_large": (mobilenet_v3_large, {"6": "c3", "12": "c4", "15": "c5"}, (40, 112, 160)),
    "regnet_x_400mf": (regnet_x_400mf, {"block2": "c3", "block3": "c4", "block4": "c5"}, (64, 160, 400)),
    "shufflenet_v2_x1_0": (shufflenet_v2_x1_0, {"stage2": "c3", "stage3": "c4", "stage4": "c5"}, (116, 232, 464)),
}
BACKBONES = ("resnet", *_MOBILE)


def build_resnet(cfg: ModelConfig) -> nn.Module:
    """Plain torchvision ResNet of `cfg.backbone_depth`, with frozen or trainable BatchNorm, and
    the stride of each stage's first bottleneck in its 1x1 conv where `cfg.stride_in_1x1`."""
    if cfg.backbone_depth not in _RESNETS:
        raise ValueError(f"backbone_depth must be one of {sorted(_RESNETS)}, got {cfg.backbone_depth}")
    if cfg.backbone_norm not in ("frozen_bn", "bn"):
        raise ValueError(f"backbone_norm must be 'frozen_bn' or 'bn', got {cfg.backbone_norm!r}")
    norm = FrozenBatchNorm2d if cfg.backbone_norm == "frozen_bn" else nn.BatchNorm2d
    body = _RESNETS[cfg.backbone_depth](weights=None, norm_layer=norm)
    if cfg.backbone_width != 1.0:
        _narrow(body, cfg.backbone_width)
    if cfg.stride_in_1x1:
        if cfg.backbone_depth < 50:
            raise ValueError("stride_in_1x1 applies to bottleneck ResNets (depth 50/101), not depth "
                             f"{cfg.backbone_depth}")
        # MSRA/detectron2 ResNets downsample in the first 1x1 conv of res3-res5; torchvision in the 3x3.
        for layer in (body.layer2, body.layer3, body.layer4):
            layer[0].conv1.stride, layer[0].conv2.stride = (2, 2), (1, 1)
    return body


def _narrow(body: resnet.ResNet, width: float) -> None:
    """Rebuild a torchvision ResNet's stem and stages with `width` x (64, 128, 256, 512) channels
    (rounded to multiples of 8), initialised as torchvision initialises them."""
    if not 0.0 < width <= 1.0:
        raise ValueError(f"backbone_width must be in (0, 1], got {width}")
    block = type(body.layer1[0])
    widths = [max(8, int(round(c * width / 8)) * 8) for c in (64, 128, 256, 512)]
    norm = body._norm_layer
    body.inplanes = widths[0]
    body.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
    body.bn1 = norm(widths[0])
    for i, c in enumerate(widths):
        blocks = len(getattr(body, f"layer{i + 1}"))
        setattr(body, f"layer{i + 1}", body._make_layer(block, c, blocks, stride=1 if i == 0 else 2))
    body.fc = nn.Linear(widths[3] * block.expansion, body.fc.out_features)
    for m in body.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def build_body(cfg: ModelConfig) -> tuple[nn.Module, list[int]]:
    """The backbone trunk returning {"c3", "c4", "c5"} (strides 8, 16, 32), and their channels."""
    if cfg.backbone == "resnet":
        body = build_resnet(cfg)
        for name, module in body.named_children():
            stage = "conv1" if name in ("conv1", "bn1") else name
            if stage in _STAGES[: cfg.freeze_at]:
                module.requires_grad_(False)
        c5 = body.fc.in_features
        return IntermediateLayerGetter(body, {"layer2": "c3", "layer3": "c4", "layer4": "c5"}), [c5 // 4, c5 // 2, c5]
    if cfg.backbone not in _MOBILE:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {cfg.backbone!r}")
    if cfg.backbone_norm != "bn" or cfg.freeze_at != 0:
        raise ValueError(f"backbone {cfg.backbone!r} trains from scratch: it needs backbone_norm 'bn' and freeze_at 0, "
                         f"got {cfg.backbone_norm!r} and {cfg.freeze_at}")
    builder, return_layers, channels = _MOBILE[cfg.backbone]
    net = builder(weights=None)
    if cfg.backbone == "mobilenet_v3_large":
        net = net.features
    elif cfg.backbone == "regnet_x_400mf":
        net = nn.Sequential(OrderedDict([("stem", net.stem), *net.trunk_output.named_children()]))
    return IntermediateLayerGetter(net, return_layers), list(channels)


class BackboneFPN(nn.Module):
    """Backbone C3-C5 -> FPN P3-P5, P6 from P5, P7 from ReLU(P6).

    forward(x: [B, 3, H, W] float, normalised) -> list of 5 tensors [B, fpn_channels, H/s, W/s]
    for s in cfg.strides (8, 16, 32, 64, 128).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.body, in_channels = build_body(cfg)
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
