"""FCOS target assignment and the choice of mask-loss instances, on hand-made boxes."""
from __future__ import annotations

import torch

from boxinst_serve.config import lite
from boxinst_serve.model.layers import compute_locations
from training.targets import centerness_target, fcos_targets, sample_mask_instances


def _grid(cfg, h, w):
    locs, levels, strides = [], [], []
    for lvl, s in enumerate(cfg.strides):
        loc = compute_locations(-(-h // s), -(-w // s), s)
        locs.append(loc)
        levels.append(torch.full((len(loc),), lvl))
        strides.append(torch.full((len(loc),), float(s)))
    return torch.cat(locs), torch.cat(levels), torch.cat(strides)


def test_small_box_is_assigned_on_p3_near_its_centre_only():
    cfg = lite(num_classes=3)
    locs, levels, strides = _grid(cfg, 128, 128)
    labels, reg, gt = fcos_targets(locs, levels, strides, torch.tensor([[40.0, 40.0, 80.0, 80.0]]),
                                   torch.tensor([2]), cfg)
    pos = labels != cfg.num_classes
    assert pos.any()
    assert (labels[pos] == 2).all() and (gt[pos] == 0).all()
    assert (levels[pos] == 0).all()  # max distance <= 36 px -> P3
    # centre sampling: radius 1.5 * 8 = 12 px around (60, 60)
    assert ((locs[pos] - 60).abs() < 12).all()
    # regression targets in stride units
    i = pos.nonzero()[0, 0]
    x, y = locs[i]
    assert torch.allclose(reg[i], torch.tensor([x - 40, y - 40, 80 - x, 80 - y]) / 8)


def test_ambiguous_location_goes_to_the_smaller_box():
    cfg = lite(num_classes=2)
    locs, levels, strides = _grid(cfg, 128, 128)
    boxes = torch.tensor([[20.0, 20.0, 100.0, 100.0], [50.0, 50.0, 70.0, 70.0]])
    labels, _, gt = fcos_targets(locs, levels, strides, boxes, torch.tensor([0, 1]), cfg)
    at_centre = ((locs == torch.tensor([60.0, 60.0])).all(dim=1) & (levels == 0)).nonzero()[0, 0]
    assert gt[at_centre] == 1 and labels[at_centre] == 1


def test_image_without_boxes_is_all_background():
    cfg = lite(num_classes=2)
    locs, levels, strides = _grid(cfg, 64, 64)
    labels, _, gt = fcos_targets(locs, levels, strides, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), cfg)
    assert (labels == 2).all() and (gt == -1).all()


def test_centerness_target_by_hand():
    ctr = centerness_target(torch.tensor([[1.0, 2.0, 3.0, 2.0], [2.0, 2.0, 2.0, 2.0]]))
    assert torch.allclose(ctr, torch.tensor([(1 / 3) ** 0.5, 1.0]))


def test_mask_instances_are_spread_evenly_over_gts():
    gt = torch.tensor([0] * 10 + [1] * 3)
    quality = torch.arange(13, dtype=torch.float32)
    keep = sample_mask_instances(gt, quality, topk_per_image=8)  # 4 per GT
    assert keep.tolist() == [6, 7, 8, 9, 10, 11, 12]  # top-4 of GT 0, all 3 of GT 1
