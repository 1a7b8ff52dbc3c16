"""ONNX export: ONNX Runtime agrees with the PyTorch module on real shapes images (two sizes,
batch 1 and 2, an image with no objects); the graph is valid, carries its metadata, and uses only
ops that TensorRT's ONNX parser supports."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from boxinst_serve.config import CONTRACT_VERSION, ModelConfig
from boxinst_serve.engines import load_engine
from boxinst_serve.preprocess import prepare_batch, read_image

ORT = pytest.importorskip("onnxruntime")
OPS_CSV_IN_REPO = Path(__file__).resolve().parents[1] / "export" / "tensorrt_onnx_ops.csv"


@pytest.fixture(scope="module")
def exported(tiny_shapes, trained_lite, tmp_path_factory):
    from export.onnx import export_onnx

    root = tmp_path_factory.mktemp("export")
    ckpt = trained_lite
    onnx_path = export_onnx(ckpt, root / "onnx")
    images = [read_image(p) for p in sorted(Path(tiny_shapes["images"]).glob("*.png"))[:2]]
    return {"checkpoint": ckpt, "onnx": onnx_path, "images": images}


def _decisive(out: dict, i: int, score_thresh: float = 0.05, margin: float = 1e-3) -> list[int]:
    """Rows of image i whose tested score (cls * ctr = score^2) is not within `margin` of the
    threshold, nor near the last kept score when all K rows are full: float differences between
    runtimes may legitimately flip those few."""
    n = int(out["num_detections"][i])
    rows = [k for k in range(n) if abs(float(out["scores"][i, k]) ** 2 - score_thresh) > margin]
    if n == out["scores"].shape[1]:  # the top-K cut: near-ties at the last kept score may swap too
        last = float(out["scores"][i, n - 1])
        rows = [k for k in rows if float(out["scores"][i, k]) - last > 1e-3]
    return rows


def _assert_same_detections(a: dict, b: dict) -> None:
    """Same detections (matched one-to-one by class and box: near-equal scores may swap order),
    boxes within 1e-3 relative, mask IoU >= 0.99 after thresholding at 0.5."""
    assert len(a["num_detections"]) == len(b["num_detections"])
    for i in range(len(a["num_detections"])):
        rows_a, rows_b = _decisive(a, i), _decisive(b, i)
        assert len(rows_a) == len(rows_b), f"image {i}: {len(rows_a)} vs {len(rows_b)} detections"
        unused = set(rows_b)
        for k in rows_a:
            same_class = [j for j in unused if b["classes"][i, j] == a["classes"][i, k]]
            assert same_class, f"image {i}: detection {k} (class {a['classes'][i, k]}) has no counterpart"
            j = min(same_class, key=lambda j: np.abs(b["boxes"][i, j] - a["boxes"][i, k]).sum())
            unused.remove(j)
            np.testing.assert_allclose(b["boxes"][i, j], a["boxes"][i, k], rtol=1e-3, atol=1e-2)
            np.testing.assert_allclose(b["scores"][i, j], a["scores"][i, k], rtol=1e-3, atol=1e-4)
            ma, mb = a["masks"][i, k] >= 128, b["masks"][i, j] >= 128
            union = (ma | mb).sum()
            iou = (ma & mb).sum() / union if union else 1.0
            assert iou >= 0.99, f"image {i} detection {k}: mask IoU {iou:.4f}"


@pytest.mark.parametrize("min_size,batch", [(128, 1), (128, 2), (192, 1), (192, 2)])
def test_onnxruntime_matches_pytorch(exported, min_size, batch):
    torch_engine = load_engine(exported["checkpoint"])
    ort_engine = load_engine(exported["onnx"])
    images, _ = prepare_batch(exported["images"][:batch], min_size, 400)
    a, b = torch_engine(images), ort_engine(images)
    assert a["num_detections"].sum() > 0, "the parity check needs detections"
    _assert_same_detections(a, b)


def test_image_without_objects_gives_no_detections_in_both(exported):
    blank = np.full((1, 128, 160, 3), 90, dtype=np.uint8)
    a = load_engine(exported["checkpoint"])(blank)
    b = load_engine(exported["onnx"])(blank)
    _assert_same_detections(a, b)
    assert (b["masks"][0, b["num_detections"][0]:] == 0).all()


def test_outputs_follow_the_network_contract(exported):
    import onnx

    model = onnx.load(str(exported["onnx"]))
    onnx.checker.check_model(model, full_check=True)
    types = {i.name: (i.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim])
             for i in list(model.graph.input) + list(model.graph.output)}
    P = onnx.TensorProto
    assert types["images"][0] == P.UINT8 and types["images"][1][3] == 3
    assert all(isinstance(d, str) for d in types["images"][1][:3])  # dynamic batch, height, width
    assert types["num_detections"][0] == P.INT32
    assert types["boxes"][0] == P.FLOAT and types["boxes"][1][1:] == [100, 4]
    assert types["scores"][0] == P.FLOAT and types["classes"][0] == P.INT32
    assert types["masks"][0] == P.UINT8 and types["masks"][1][1] == 100


def test_metadata_carries_config_class_names_and_contract(exported):
    from export.onnx import read_metadata

    meta = read_metadata(exported["onnx"])
    cfg = ModelConfig.from_json(meta["model_config"])
    assert cfg.name == "lite" and cfg.num_classes == 7
    assert json.loads(meta["class_names"]) == cfg.class_names
    assert meta["contract_version"] == CONTRACT_VERSION == "2"  # v2: own-size padding (v1 letterboxed)


def test_graph_uses_only_tensorrt_supported_ops_and_opset(exported):
    import onnx

    from export.onnx import op_types

    path = OPS_CSV_IN_REPO
    rows = list(csv.reader(line for line in path.read_text().splitlines() if not line.startswith("#")))
    supported = {r[0] for r in rows[1:] if len(r) > 1 and r[1] == "Y"}
    used = op_types(exported["onnx"])
    assert used - supported == set(), f"ops TensorRT cannot parse: {sorted(used - supported)}"
    assert {"NonMaxSuppression", "TopK", "MatMul"} <= used  # NMS and the dynamic heads are in the graph
    model = onnx.load(str(exported["onnx"]))
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert 9 <= opset <= 20  # TensorRT 10 parses opsets 9 to 20
    assert all(o.domain in ("", "ai.onnx") for o in model.opset_import if o.version)  # no plugin domains


def test_segment_gives_the_same_instances_with_onnx_and_checkpoint(exported, tiny_shapes, tmp_path):
    from boxinst_serve.apps.segment import segment_paths

    paths = sorted(Path(tiny_shapes["images"]).glob("*.png"))[:3]
    reports = {}
    for name in ("checkpoint", "onnx"):
        report = segment_paths(load_engine(exported[name]), paths, tmp_path / name, progress=False)
        reports[name] = json.loads(Path(report.results_json).read_text())
    a, b = reports["checkpoint"], reports["onnx"]
    assert len(a) == len(b) > 0
    from pycocotools import mask as mask_utils

    unused = list(b)
    for ra in a:  # matched by image, class and box: near-equal scores may swap order
        rb = min((r for r in unused if r["image_id"] == ra["image_id"] and r["category_id"] == ra["category_id"]),
                 key=lambda r: np.abs(np.subtract(r["bbox"], ra["bbox"])).sum())
        unused.remove(rb)
        np.testing.assert_allclose(ra["bbox"], rb["bbox"], rtol=1e-3, atol=1e-2)
        iou = mask_utils.iou([rb["segmentation"]], [ra["segmentation"]], [0])[0, 0]
        assert iou >= 0.99 or mask_utils.area(ra["segmentation"]) == 0


def test_replace_dir_swaps_a_folder_in_whole(tmp_path):
    from boxinst_serve.files import replace_dir

    final = tmp_path / "boxinst_net"
    (final / "1").mkdir(parents=True)
    (final / "1" / "old.txt").write_text("old")
    work = tmp_path / ".boxinst_net.tmp"
    (work / "1").mkdir(parents=True)
    (work / "1" / "new.txt").write_text("new")
    replace_dir(work, final)
    assert sorted(p.name for p in (final / "1").iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["boxinst_net"]  # neither the work nor the old folder left
    work.mkdir()
    (work / "x").write_text("x")
    replace_dir(work, tmp_path / "fresh")  # nothing there before
    assert (tmp_path / "fresh" / "x").read_text() == "x"
