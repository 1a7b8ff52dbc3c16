"""Small shared layers and location helpers."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def aligned_bilinear(x: torch.Tensor, factor: int) -> torch.Tensor:
    """CondInst's aligned bilinear upsampling (SPEC.md, "Mask logits").

    x: [N, C, h, w] -> [N, C, factor*h, factor*w]. Replicate-pad right/bottom by 1, bilinear with
    align_corners=True to (factor*h + 1, factor*w + 1), replicate-pad left/top by factor//2, crop.
    """
    if factor == 1:
        return x
    h, w = x.shape[-2:]
    x = F.pad(x, (0, 1, 0, 1), mode="replicate")
    x = F.interpolate(x, size=(factor * h + 1, factor * w + 1), mode="bilinear", align_corners=True)
    x = F.pad(x, (factor // 2, 0, factor // 2, 0), mode="replicate")
    return x[:, :, : factor * h, : factor * w]


def compute_locations(h: int, w: int, stride: int, device: torch.device | None = None) -> torch.Tensor:
    """Pixel-centre locations of a feature map: [h*w, 2] (x, y) = stride * index + stride // 2,
    row-major (y outer, x inner), matching `tensor.flatten(2)` of a [B, C, h, w] map."""
    xs = torch.arange(w, device=device, dtype=torch.float32) * stride + stride // 2
    ys = torch.arange(h, device=device, dtype=torch.float32) * stride + stride // 2
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


def conv_norm_relu(cin: int, cout: int, norm: str, gn_groups: int = 32, bias: bool = False) -> nn.Sequential:
    """3x3 conv (with a bias only where `bias`) + GroupNorm or BatchNorm + ReLU."""
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=bias)
    if norm == "gn":
        n: nn.Module = nn.GroupNorm(gn_groups, cout)
    elif norm == "bn":
        n = nn.BatchNorm2d(cout)
    else:
        raise ValueError(f"norm must be 'gn' or 'bn', got {norm!r}")
    return nn.Sequential(conv, n, nn.ReLU(inplace=True))
