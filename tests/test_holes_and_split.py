"""The opt-in loss for enclosed background (hand cases) and the class split of mixed supervision."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from training.hole_loss import enclosed_background, enclosed_background_targets, hole_loss
from training.losses import boxes_to_bitmasks, image_lab

BACKGROUND, OBJECT = (90, 140, 90), (200, 40, 160)


def _scene(draw) -> tuple[torch.Tensor, torch.Tensor]:
    """A 128x128 image of uniform background with one object drawn by `draw(yy, xx) -> bool
    mask`; returns (lab [1, 3, 32, 32] at stride 4, box bitmask [1, 1, 32, 32])."""
    yy, xx = np.mgrid[0:128, 0:128]
    obj = draw(yy, xx)
    img = np.empty((128, 128, 3), np.uint8)
    img[:] = BACKGROUND
    img[obj] = OBJECT
    ys, xs = np.nonzero(obj)
    box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
    return image_lab(torch.from_numpy(img)[None], 4), boxes_to_bitmasks(box, 128, 128, 4)


def _ring(yy, xx):
    r = np.hypot(yy - 64, xx - 64)
    return (r < 40) & (r >= 20)


def _disc(yy, xx):
    return np.hypot(yy - 64, xx - 64) < 40


def test_a_ring_gets_a_background_signal_in_its_hole():
    lab, box = _scene(_ring)
    valid = torch.ones(32, 32, dtype=torch.bool)
    holes = enclosed_background(lab[0], box[0, 0] > 0, valid)
    cells = np.mgrid[0:32, 0:32] * 4 + 2  # the centres of the stride-4 cells
    r = np.hypot(cells[0] - 64, cells[1] - 64)
    assert holes[torch.from_numpy(r < 16)].all()  # the hole, a cell inside its edge
    assert not holes[torch.from_numpy(r >= 20)].any()  # never the ring, nor the box's corners
    assert int(holes.sum()) >= 40


def test_a_disc_gets_none():
    lab, box = _scene(_disc)
    assert not enclosed_background(lab[0], box[0, 0] > 0, torch.ones(32, 32, dtype=torch.bool)).any()


def test_the_loss_pushes_the_hole_towards_background_only():
    lab, box = _scene(_ring)
    holes = enclosed_background_targets(lab, box, torch.tensor([0]), torch.ones(1, 32, 32, dtype=torch.bool))
    logits = torch.zeros(1, 1, 32, 32, requires_grad=True)
    loss = hole_loss(logits, holes, box)
    # -log(1 - 0.5) on every hole pixel, summed, over the box's pixels
    assert loss.detach().item() == pytest.approx(np.log(2.0) * holes.sum().item() / box.sum().item(), rel=1e-5)
    loss.backward()
    assert (logits.grad[holes] > 0).all() and (logits.grad[~holes] == 0).all()
    no_holes = hole_loss(logits, torch.zeros_like(holes), box)
    assert no_holes.detach().item() == 0.0 and no_holes.requires_grad
    mean = hole_loss(logits, holes, normalize="holes")  # the mean over hole pixels
    assert mean.detach().item() == pytest.approx(np.log(2.0), rel=1e-5)
    with pytest.raises(ValueError, match="needs box_masks"):
        hole_loss(logits, holes)


def test_the_hole_term_is_off_by_default_and_joins_the_losses_when_asked(tiny_shapes):
    from boxinst_serve.config import lite
    from boxinst_serve.model import build_model
    from training.config import LossConfig
    from training.criterion import compute_losses
    from training.data import CocoBoxDataset, collate

    cfg = lite(num_classes=7).replace(min_size_test=128, max_size_test=160)
    batch = collate([CocoBoxDataset(tiny_shapes["train"], min_sizes=(128,), max_size=160)[i] for i in range(2)])
    model = build_model(cfg).train()
    torch.manual_seed(0)
    assert "loss_hole" not in compute_losses(model(batch["images"]), batch, cfg, LossConfig(), 10)
    always = LossConfig(hole_loss_weight=1.0, hole_loss_start_iters=0)
    losses = compute_losses(model(batch["images"]), batch, cfg, always, 10)
    assert "loss_hole" in losses and torch.isfinite(losses["loss_hole"])
    # before its start iteration the hole term is a zero (logged, no push on the masks)
    late = LossConfig(hole_loss_weight=1.0, hole_loss_start_iters=100)

    def hole(loss_cfg: LossConfig, iteration: int) -> float:
        return compute_losses(model(batch["images"]), batch, cfg, loss_cfg, iteration)["loss_hole"].item()

    assert hole(late, 99) == 0.0
    on = hole(always, 100)
    assert on > 0.0  # the batch has an enclosed hole, so the check above could fail
    assert hole(late, 100) == pytest.approx(on)


def test_hole_loss_start_scales_with_the_schedule():
    from training.config import REFERENCE_ITERS, LossConfig, TrainConfig

    cfg = TrainConfig.scaled(1200, loss=LossConfig(hole_loss_weight=0.25, hole_loss_start_iters=REFERENCE_ITERS // 3))
    assert cfg.loss.hole_loss_start_iters == 400
    assert TrainConfig.scaled(1200).loss.hole_loss_start_iters == 400  # the default: a third of the schedule
    assert TrainConfig.scaled(1200, loss=LossConfig(hole_loss_start_iters=0)).loss.hole_loss_start_iters == 0


def test_group_b_never_reads_a_mask(tiny_shapes, tmp_path):
    from training.data import CocoBoxDataset, collate

    coco = json.loads(open(tiny_shapes["train"]).read())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    group_a = ("circle", "triangle", "ring")
    for ann in coco["annotations"]:
        if names[ann["category_id"]] not in group_a:
            del ann["segmentation"]
    (tmp_path / "a_only.json").write_text(json.dumps(coco))

    split = CocoBoxDataset(tiny_shapes["train"], supervision="mixed", mask_classes=group_a, min_sizes=(128,),
                           max_size=160)
    deleted = CocoBoxDataset(tmp_path / "a_only.json", tiny_shapes["images"], supervision="mixed", min_sizes=(128,),
                             max_size=160)
    assert len(split) == len(deleted)
    for i in range(0, len(split), 4):
        a, b = collate([split[(i, 7)]]), collate([deleted[(i, 7)]])
        assert torch.equal(a["images"], b["images"])
        ta, tb = a["targets"][0], b["targets"][0]
        assert torch.equal(ta["has_mask"], tb["has_mask"]) and torch.equal(ta["masks"], tb["masks"])
        assert torch.equal(ta["boxes"], tb["boxes"]) and torch.equal(ta["labels"], tb["labels"])
    with pytest.raises(ValueError, match="not categories"):
        CocoBoxDataset(tiny_shapes["train"], supervision="mixed", mask_classes=("unicorn",))
