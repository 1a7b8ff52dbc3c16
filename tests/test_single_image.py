"""`segment`, `annotate` and `eval` hand the network one image at a time: each image padded to its
own size, exactly as the model was evaluated (a batch pads every image to its largest member, and
the FCOS towers' GroupNorm sees that padding). The served paths keep the same rule
(tests/test_serving.py); these are the in-process commands."""
from __future__ import annotations

from pathlib import Path

import boxinst_serve.apps.annotate as annotate_mod
import boxinst_serve.apps.segment as segment_mod
import boxinst_serve.predictor as predictor_mod
import boxinst_serve.preprocess as preprocess_mod
import training.evaluate as evaluate_mod


def _recording(monkeypatch, module) -> list[int]:
    """Replace `module.prepare_for` by one that records how many images each call pads together."""
    calls: list[int] = []
    real = preprocess_mod.prepare_for

    def prepare_for(cfg, images):
        calls.append(len(images))
        return real(cfg, images)

    monkeypatch.setattr(module, "prepare_for", prepare_for)
    return calls


def test_segment_runs_one_image_at_a_time(monkeypatch, lite_onnx, tiny_shapes, tmp_path):
    from boxinst_serve.engines import load_engine

    calls = _recording(monkeypatch, predictor_mod)  # segment runs the Predictor
    paths = sorted(Path(tiny_shapes["images"]).glob("*.png"))[:4]
    report = segment_mod.segment_paths(load_engine(lite_onnx), paths, tmp_path / "out", overlays=False,
                                       progress=False)
    assert report.processed == 4 and calls == [1, 1, 1, 1]


def test_eval_runs_one_image_at_a_time(monkeypatch, trained_lite, tiny_shapes):
    calls = _recording(monkeypatch, predictor_mod)  # eval runs the Predictor
    report = evaluate_mod.evaluate(str(trained_lite), tiny_shapes["val"], progress=False)
    assert report["num_images"] >= 3 and calls == [1] * report["num_images"]


def test_annotate_runs_one_image_at_a_time(monkeypatch, trained_lite, tiny_shapes, tmp_path):
    import json

    calls = _recording(monkeypatch, annotate_mod)
    annotate_mod.annotate(trained_lite, tiny_shapes["val"], None, tmp_path / "out.json", progress=False)
    images_with_boxes = {a["image_id"] for a in json.loads(Path(tiny_shapes["val"]).read_text())["annotations"]}
    assert len(images_with_boxes) >= 3 and calls == [1] * len(images_with_boxes)
