"""A model trained here gives the same outputs as before the AdelaiDet-import switches were added
to ModelConfig: with their defaults, every path is the one it was.

`data/lite_seeded_outputs.npz` was written at commit 804269d (before those switches) by running
`seeded_model()` below on its two images: the padded network outputs of `prepare_batch` +
`InferenceModel`, 22 and 92 detections."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from boxinst_serve.config import OUTPUT_NAMES, lite
from boxinst_serve.model import build_model
from boxinst_serve.model.detect import InferenceModel
from boxinst_serve.postprocess import paste_masks
from boxinst_serve.preprocess import ImageMeta, prepare_for
from tests.parity import Detections, compare

GOLDEN = Path(__file__).parent / "data" / "lite_seeded_outputs.npz"


def seeded_model():
    """lite (3 classes) from seed 0, with class and box layers drawn wider than at initialisation
    so that a few dozen detections of varied boxes pass the 0.05 threshold."""
    torch.manual_seed(0)
    cfg = lite(num_classes=3)
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.head.cls_logits.weight.copy_(torch.randn(model.head.cls_logits.weight.shape, generator=g) * 0.05)
        model.head.cls_logits.bias.fill_(-4.0)
        model.head.bbox_pred.weight.copy_(torch.randn(model.head.bbox_pred.weight.shape, generator=g) * 0.03)
        model.head.bbox_pred.bias.fill_(0.7)
    return cfg, model


def _detections(out: dict, k: int, meta: ImageMeta) -> Detections:
    n = int(out["num_detections"][k])
    return Detections(out["boxes"][k, :n], out["scores"][k, :n], out["classes"][k, :n],
                      paste_masks(out["masks"][k, :n], meta))


def test_a_model_trained_here_gives_the_outputs_it_gave_before():
    golden = np.load(GOLDEN)
    cfg, model = seeded_model()
    images = [golden["image0"], golden["image1"]]
    batch, metas = prepare_for(cfg, images)
    assert [m.resized_hw for m in metas] == [tuple(hw) for hw in golden["resized_hw"]]
    with torch.no_grad():
        out = dict(zip(OUTPUT_NAMES, (t.numpy() for t in InferenceModel(model)(torch.from_numpy(batch)))))
    for k, meta in enumerate(metas):
        report = compare(_detections(golden, k, meta), _detections(out, k, meta), box_tol=1e-3, score_tol=1e-5,
                         min_mask_iou=0.99, score_floor=0.05 ** 0.5, cap=cfg.max_detections, noise=1e-4)
        assert report.ok, report.failures
        assert len(report.matched) >= int(golden["num_detections"][k]) - len(report.tolerated)
