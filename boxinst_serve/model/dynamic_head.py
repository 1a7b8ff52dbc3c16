"""CondInst dynamic mask head: per-instance 1x1 convolutions whose weights come from the
controller (SPEC.md, "Dynamic mask head", "Relative coordinates", "Mask logits").

Written with batched matrix products (one [out, in] matrix per instance) so that the same
function serves training, PyTorch inference and the ONNX/TensorRT graph.
"""
from __future__ import annotations

import torch

from boxinst_serve.config import ModelConfig
from boxinst_serve.model.layers import aligned_bilinear, compute_locations


def split_dynamic_params(params: torch.Tensor, cfg: ModelConfig):
    """params: [N, P] -> (weights, biases): lists over layers of [N, out, in] and [N, out, 1].

    Layout of P (AdelaiDet): all layers' weights first (row-major [out, in]), then all biases.
    """
    n = params.shape[0]
    sizes = cfg.mask_head_weight_nums + cfg.mask_head_bias_nums
    chunks = torch.split(params, sizes, dim=1)
    layers = cfg.mask_head_layers
    weights, biases = [], []
    for i in range(layers):
        cout = cfg.mask_head_bias_nums[i]
        cin = cfg.mask_head_weight_nums[i] // cout
        weights.append(chunks[i].reshape(n, cout, cin))
        biases.append(chunks[layers + i].reshape(n, cout, 1))
    return weights, biases


def relative_coords(
    instance_locations: torch.Tensor,
    instance_levels: torch.Tensor,
    mask_h: int,
    mask_w: int,
    cfg: ModelConfig,
) -> torch.Tensor:
    """instance_locations: [N, 2] (x, y) input pixels; instance_levels: [N] int FPN level index.
    Returns [N, 2, mask_h * mask_w]: (instance location - mask pixel location) / size of interest."""
    locations = compute_locations(mask_h, mask_w, cfg.mask_branch_stride, instance_locations.device)
    rel = instance_locations[:, None, :] - locations[None, :, :]  # [N, HW, 2]
    soi = torch.tensor(cfg.sizes_of_interest, dtype=rel.dtype, device=rel.device)[instance_levels]
    return rel.permute(0, 2, 1) / soi[:, None, None]


def dynamic_mask_logits(
    mask_feats: torch.Tensor,
    params: torch.Tensor,
    instance_locations: torch.Tensor,
    instance_levels: torch.Tensor,
    image_index: torch.Tensor,
    cfg: ModelConfig,
) -> torch.Tensor:
    """Run each instance's dynamic head on its image's mask features.

    mask_feats: [B, Cm, h, w] (stride 8); params: [N, P]; instance_locations: [N, 2];
    instance_levels: [N] long; image_index: [N] long.
    Returns mask logits [N, 1, h * r, w * r] at cfg.mask_out_stride (r = 8 / mask_out_stride).
    """
    _, cm, h, w = mask_feats.shape
    n = params.shape[0]
    rel = relative_coords(instance_locations, instance_levels, h, w, cfg).to(mask_feats.dtype)
    feats = mask_feats[image_index].reshape(n, cm, h * w)
    x = torch.cat([rel, feats], dim=1)  # [N, 2 + Cm, HW]
    weights, biases = split_dynamic_params(params.to(mask_feats.dtype), cfg)
    for i, (wt, b) in enumerate(zip(weights, biases)):
        x = torch.bmm(wt, x) + b
        if i < len(weights) - 1:
            x = torch.relu(x)
    logits = x.reshape(n, 1, h, w)
    return aligned_bilinear(logits, cfg.mask_branch_stride // cfg.mask_out_stride)
