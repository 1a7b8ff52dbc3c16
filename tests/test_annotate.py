"""`boxinst annotate`: a box-clipped mask for every ground-truth box of tiny_shapes val, none
dropped; the output loads with pycocotools; the IoU report against the true masks."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from boxinst_serve.apps.annotate import annotate, box_region, mask_iou_report
from boxinst_serve.cli import main


def decode(seg: dict) -> np.ndarray:
    return mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode("ascii")}).astype(bool)


def check_output(out: Path, data_json: str) -> dict:
    src = json.loads(Path(data_json).read_text())
    res = json.loads(out.read_text())
    assert [a["id"] for a in res["annotations"]] == [a["id"] for a in src["annotations"]]  # none dropped
    assert res["images"] == src["images"] and res["categories"] == src["categories"]
    sizes = {im["id"]: (im["height"], im["width"]) for im in res["images"]}
    for a, s in zip(res["annotations"], src["annotations"]):
        assert a["bbox"] == s["bbox"] and a["category_id"] == s["category_id"]
        assert isinstance(a["segmentation"]["counts"], str)
        h, w = sizes[a["image_id"]]
        m = decode(a["segmentation"])
        assert m.shape == (h, w) and m.any()
        assert a["area"] == int(m.sum())
        y0, y1, x0, x1 = box_region(np.array([a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                                              a["bbox"][1] + a["bbox"][3]]), h, w)
        inside = np.zeros_like(m)
        inside[y0:y1, x0:x1] = True
        assert not (m & ~inside).any()  # clipped to its box
        assert a["pseudo_mask"] in ("detection", "location", "box")
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(out))
    for ann in coco.loadAnns(coco.getAnnIds()):
        assert coco.annToMask(ann).sum() == ann["area"]
    return res


@pytest.fixture(scope="module")
def annotated(trained_lite, tiny_shapes, tmp_path_factory):
    out = tmp_path_factory.mktemp("annotate") / "masks.json"
    report = annotate(trained_lite, tiny_shapes["val"], tiny_shapes["images"], out, progress=False)
    return out, report


def test_every_box_gets_a_mask_inside_it(annotated, tiny_shapes):
    out, report = annotated
    res = check_output(out, tiny_shapes["val"])
    assert report.annotations == len(res["annotations"]) > 0
    assert report.from_detections + report.from_locations + report.filled_boxes == report.annotations
    sources = [a["pseudo_mask"] for a in res["annotations"]]
    assert sources.count("detection") == report.from_detections
    assert sources.count("box") == report.filled_boxes


def test_without_detections_the_best_location_gives_the_mask(trained_lite, tiny_shapes, tmp_path):
    out = tmp_path / "masks.json"
    report = annotate(trained_lite, tiny_shapes["val"], tiny_shapes["images"], out, iou_thresh=1.01,
                      progress=False)  # no detection can match: every mask comes from a location (or the box)
    assert report.from_detections == 0
    assert report.from_locations + report.filled_boxes == report.annotations
    check_output(out, tiny_shapes["val"])


def test_mask_iou_report(annotated, tiny_shapes):
    out, report = annotated
    iou = mask_iou_report(out, tiny_shapes["val"], report.detections)
    n = len(json.loads(Path(tiny_shapes["val"]).read_text())["annotations"])
    assert iou["objects"] == n
    assert 0.0 < iou["pseudo_label_miou"] <= 1.0
    assert 0.0 <= iou["detector_miou"] <= 1.0
    assert 0 <= iou["detector_matched"] <= n
    # the true masks against themselves
    assert mask_iou_report(tiny_shapes["val"], tiny_shapes["val"])["pseudo_label_miou"] == pytest.approx(1.0)
    assert mask_iou_report(tiny_shapes["val"], tiny_shapes["val"])["detector_miou"] is None


def test_cli_annotate_with_report(trained_lite, tiny_shapes, tmp_path, capsys):
    out = tmp_path / "masks.json"
    assert main(["annotate", "--data", tiny_shapes["val"], "--images", tiny_shapes["images"], "--model",
                 str(trained_lite), "--out", str(out), "--report", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "annotation(s)" in text and "pseudo-labels" in text and "plain detector" in text
    check_output(out, tiny_shapes["val"])


def test_annotate_refuses_a_non_checkpoint(tiny_shapes, tmp_path):
    with pytest.raises(ValueError, match=r"\.pt checkpoint"):
        annotate(tmp_path / "model.onnx", tiny_shapes["val"], None, tmp_path / "out.json")
