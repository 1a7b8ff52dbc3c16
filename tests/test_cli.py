"""The `boxinst` command end to end on a tiny set: make-shapes, train (boxes only, segmentations
deleted from the json), eval --json, segment with a corrupt file among good ones, info."""
from __future__ import annotations

import json
import shutil

import pytest

from boxinst_serve.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    assert main(["make-shapes", str(root / "shapes"), "--num-images", "10", "--seed", "1", "--size", "96"]) == 0
    coco = json.loads((root / "shapes" / "train.json").read_text())
    for ann in coco["annotations"]:
        del ann["segmentation"]  # box supervision must never need them
    (root / "boxes.json").write_text(json.dumps(coco))
    rc = main(["train", "--data", str(root / "boxes.json"), "--images", str(root / "shapes" / "images"),
               "--config", "lite", "--iters", "2", "--batch-size", "2", "--min-sizes", "96", "--max-size", "128",
               "--workers", "0", "--out", str(root / "run"), "--quiet"])
    assert rc == 0
    return root


def test_make_shapes_writes_the_coco_layout(trained):
    shapes = trained / "shapes"
    train, val = (json.loads((shapes / f).read_text()) for f in ("train.json", "val.json"))
    assert len(train["images"]) + len(val["images"]) == 10
    assert all((shapes / "images" / im["file_name"]).exists() for im in train["images"] + val["images"])


def test_train_on_boxes_only_writes_checkpoints_and_metrics(trained):
    run = trained / "run"
    assert (run / "final.pt").exists() and (run / "last.pt").exists()
    assert len((run / "metrics.jsonl").read_text().splitlines()) >= 1


def test_eval_writes_ap_figures_and_predictions(trained, capsys):
    out = trained / "result.json"
    assert main(["eval", "--checkpoint", str(trained / "run" / "final.pt"),
                 "--data", str(trained / "shapes" / "val.json"), "--json", str(out), "--quiet"]) == 0
    report = json.loads(out.read_text())
    for task in ("bbox", "segm"):
        assert set(report[task]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert isinstance(report["predictions"], list)
    assert "| segm |" in capsys.readouterr().out


def test_segment_reports_a_corrupt_file_by_name_and_processes_the_rest(trained, tmp_path, capsys):
    images = tmp_path / "in"
    images.mkdir()
    good = sorted((trained / "shapes" / "images").glob("*.png"))[:2]
    for p in good:
        shutil.copy(p, images / p.name)
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    rc = main(["segment", str(images), "--model", str(trained / "run" / "final.pt"), "--out", str(tmp_path / "out"),
               "--quiet"])
    assert rc == 1
    assert "broken.png" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == sorted(p.name for p in good)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert all({"bbox", "score", "segmentation", "geometry", "file_name"} <= set(r) for r in results)


def test_missing_image_is_an_error_naming_the_file(trained, tmp_path, capsys):
    coco = json.loads((trained / "shapes" / "train.json").read_text())
    coco["images"][0]["file_name"] = "does_not_exist.png"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(coco))
    rc = main(["train", "--data", str(bad), "--images", str(trained / "shapes" / "images"), "--config", "lite",
               "--iters", "1", "--batch-size", "2", "--min-sizes", "96", "--workers", "0",
               "--out", str(tmp_path / "run"), "--quiet"])
    assert rc == 2
    assert "does_not_exist.png" in capsys.readouterr().err


def test_info_counts_parameters_and_flops(capsys):
    assert main(["info", "--config", "lite", "--size", "128", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] > 1e6 and info["gflops"] > 0.5 and info["controller_params"] == 233


def test_bench_reports_latency_figures_as_json(capsys):
    assert main(["bench", "--config", "lite", "--size", "64x96", "--engines", "torch", "--iters", "2",
                 "--warmup", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    (report,) = out["reports"]
    assert report["engine"] == "torch" and report["input_hw"] == [64, 96] and report["iters"] == 2
    assert 0 < report["p50_ms"] <= report["p99_ms"] and report["fps"] > 0
    assert report["network_ms"] > 0 and "machine" in out
    assert out["paper"] == "paper: ~10 FPS, R-101, 1080Ti" and out["dense_gflops_per_s"] > 0
    assert report["gflops"] > 0 and 0 < report["efficiency"] < 1.5
    assert set(report["stages_ms"]) == {"preprocess", "backbone_fpn", "fcos_head", "mask_branch", "decode_nms",
                                        "dynamic_mask_heads", "paste_masks"}
    assert all(v >= 0 for v in report["stages_ms"].values())
