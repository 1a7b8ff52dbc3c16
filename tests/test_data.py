"""COCO dataset and collate: supervision modes, bad annotations, resize/flip geometry, padding."""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from training.data import CocoBoxDataset, collate
from training.shapes import make_shapes


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return make_shapes(tmp_path_factory.mktemp("shapes"), num_images=8, seed=1, size=96, val_fraction=0.25, progress=False)


def _write(path: Path, coco: dict) -> Path:
    path.write_text(json.dumps(coco))
    return path


def _tiny_set(tmp_path: Path, width: int = 80, height: int = 60) -> dict:
    """One image with a rectangle mask at x 10..40, y 5..25, plus a json skeleton."""
    (tmp_path / "images").mkdir(exist_ok=True)
    img = np.zeros((height, width, 3), dtype=np.uint8)
    img[:, : width // 2] = (0, 0, 255)  # BGR red on the left half
    cv2.imwrite(str(tmp_path / "images" / "a.png"), img)
    poly = [10, 5, 40, 5, 40, 25, 10, 25]
    return {
        "images": [{"id": 1, "file_name": "a.png", "width": width, "height": height}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 5, 30, 20], "area": 600, "iscrowd": 0, "segmentation": [poly]}
        ],
        "categories": [{"id": 3, "name": "box"}, {"id": 1, "name": "thing"}],
    }


def test_box_mode_without_segmentations(shapes: dict, tmp_path: Path) -> None:
    coco = json.loads(Path(shapes["train"]).read_text())
    for ann in coco["annotations"]:
        del ann["segmentation"]
    path = _write(tmp_path / "nosegs.json", coco)
    ds = CocoBoxDataset(path, images_dir=shapes["images"], supervision="box", min_sizes=(64,), max_size=200)
    assert len(ds) == 6 and ds.image_ids == [im["id"] for im in coco["images"]]
    assert ds.num_dropped == {}
    assert ds.class_names[:2] == ["circle", "rectangle"] and ds.category_ids == sorted(ds.category_ids)
    s = ds[0]
    assert s["masks"] is None and s["image"].shape == (64, 64, 3) and s["image"].dtype == torch.uint8
    assert s["boxes"].dtype == torch.float32 and s["labels"].dtype == torch.int64
    assert not s["has_mask"].any()
    assert s["orig_size"] == (96, 96) and s["scale"] == pytest.approx(64 / 96)


def test_default_images_dir_and_rgb(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.json", _tiny_set(tmp_path))
    ds = CocoBoxDataset(path, min_sizes=(60,), max_size=1000)
    img = ds[0]["image"].numpy()
    assert tuple(img[0, 0]) == (255, 0, 0) and tuple(img[0, -1]) == (0, 0, 0)
    assert ds.category_ids == [1, 3] and ds.class_names == ["thing", "box"]
    assert ds[0]["labels"].tolist() == [1]
    assert ds.coco_json_path == str(path)


def test_category_ids_argument(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.json", _tiny_set(tmp_path))
    ds = CocoBoxDataset(path, category_ids=[3])
    assert ds.class_names == ["box"] and ds[0]["labels"].tolist() == [0]
    ds = CocoBoxDataset(path, category_ids=[1])
    assert ds.num_dropped == {"unknown_category": 1} and len(ds[0]["labels"]) == 0


def test_malformed_annotations_dropped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    coco = _tiny_set(tmp_path)
    good = coco["annotations"][0]
    bad = {
        "invalid_bbox": [[1, 2, 3], [1, 2, float("nan"), 4], "x", [1, 2, "3", 4]],
        "zero_size": [[5, 5, 0, 10], [5, 5, 10, -2]],
        "outside_image": [[100, 5, 10, 10], [-30, 5, 20, 10], [5, 60, 10, 10]],
        "unknown_category": [[5, 5, 10, 10]],
        "crowd": [[5, 5, 10, 10]],
        "unknown_image": [[5, 5, 10, 10]],
    }
    next_id = 10
    for reason, bboxes in bad.items():
        for bbox in bboxes:
            ann = dict(copy.deepcopy(good), id=next_id, bbox=bbox)
            if reason == "unknown_category":
                ann["category_id"] = 99
            if reason == "crowd":
                ann["iscrowd"] = 1
            if reason == "unknown_image":
                ann["image_id"] = 42
            coco["annotations"].append(ann)
            next_id += 1
    clipped = dict(copy.deepcopy(good), id=99, bbox=[-10, 50, 30, 30])  # partly outside
    coco["annotations"].append(clipped)
    coco["images"].append({"id": 2, "file_name": "a.png", "width": 80, "height": 60})  # a negative
    path = _write(tmp_path / "bad.json", coco)
    with caplog.at_level(logging.WARNING, logger="training.data"):
        ds = CocoBoxDataset(path, min_sizes=(60,), max_size=1000)
    assert ds.num_dropped == {k: len(v) for k, v in bad.items()}
    assert sum("dropped" in r.getMessage() for r in caplog.records) == 1
    assert len(ds) == 2
    s = ds[0]
    assert s["boxes"].tolist() == [[10, 5, 40, 25], [0, 50, 20, 60]]
    assert ds.num_clipped == 1
    neg = ds[1]
    assert neg["boxes"].shape == (0, 4) and neg["labels"].shape == (0,)


def test_mask_mode_drops_annotations_without_segmentation(tmp_path: Path) -> None:
    coco = _tiny_set(tmp_path)
    coco["annotations"].append(dict(copy.deepcopy(coco["annotations"][0]), id=2, bbox=[50, 30, 10, 10]))
    del coco["annotations"][1]["segmentation"]
    path = _write(tmp_path / "a.json", coco)
    ds = CocoBoxDataset(path, supervision="mask", min_sizes=(60,), max_size=1000)
    assert ds.num_dropped == {"no_segmentation": 1}
    s = ds[0]
    assert s["masks"].shape == (1, 60, 80) and s["masks"].dtype == torch.uint8
    assert s["has_mask"].tolist() == [True]
    assert int(s["masks"].sum()) == 30 * 20


def test_mixed_mode_has_mask_flags(tmp_path: Path) -> None:
    coco = _tiny_set(tmp_path)
    coco["annotations"].append(dict(copy.deepcopy(coco["annotations"][0]), id=2, bbox=[50, 30, 10, 10]))
    del coco["annotations"][1]["segmentation"]
    path = _write(tmp_path / "a.json", coco)
    ds = CocoBoxDataset(path, supervision="mixed", min_sizes=(60,), max_size=1000)
    assert ds.num_dropped == {}
    s = ds[0]
    assert s["has_mask"].tolist() == [True, False]
    assert s["masks"].shape == (2, 60, 80)
    assert s["masks"][0].sum() > 0 and s["masks"][1].sum() == 0


def test_unknown_supervision_mode(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.json", _tiny_set(tmp_path))
    with pytest.raises(ValueError, match="box.*mask.*mixed"):
        CocoBoxDataset(path, supervision="points")


def test_missing_and_unreadable_image(tmp_path: Path) -> None:
    coco = _tiny_set(tmp_path)
    coco["images"][0]["file_name"] = "missing.png"
    ds = CocoBoxDataset(_write(tmp_path / "a.json", coco))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "images" / "missing.png")):
        ds[0]
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
    coco["images"][0]["file_name"] = "broken.png"
    ds = CocoBoxDataset(_write(tmp_path / "b.json", coco))
    with pytest.raises(ValueError, match="broken.png"):
        ds[0]


def test_resize_scales_boxes_and_masks_consistently(shapes: dict) -> None:
    ds = CocoBoxDataset(shapes["train"], supervision="mask", min_sizes=(160,), max_size=1000)
    n = 0
    for i in range(len(ds)):
        s = ds[i]
        assert s["image"].shape == (160, 160, 3) and s["masks"].shape[1:] == (160, 160)
        for box, mask in zip(s["boxes"], s["masks"]):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            mask_box = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
            assert torch.allclose(mask_box, box, atol=2.0), (mask_box, box)
            n += 1
    assert n > 0


def test_max_size_caps_long_side(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.json", _tiny_set(tmp_path, width=200, height=50))
    ds = CocoBoxDataset(path, min_sizes=(100,), max_size=300)
    s = ds[0]
    assert s["image"].shape == (75, 300, 3) and s["scale"] == pytest.approx(1.5)
    assert s["boxes"].tolist() == [[15, 7.5, 60, 37.5]]


def test_flip_mirrors_boxes_and_masks(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.json", _tiny_set(tmp_path))
    ds = CocoBoxDataset(path, supervision="mask", min_sizes=(60,), max_size=1000, flip_prob=1.0)
    plain, flipped = ds[0], ds[(0, 123)]
    assert flipped["flipped"] and not plain["flipped"]
    assert flipped["boxes"].tolist() == [[40, 5, 70, 25]]
    assert torch.equal(flipped["masks"], plain["masks"].flip(-1))
    assert torch.equal(flipped["image"], plain["image"].flip(1))


def test_seeded_augmentation_is_reproducible(shapes: dict) -> None:
    ds = CocoBoxDataset(shapes["train"], min_sizes=(64, 80, 96), max_size=1000, flip_prob=0.5)
    draws = [(ds[(0, seed)]["image"].shape[0], ds[(0, seed)]["flipped"]) for seed in range(20)]
    assert draws == [(ds[(0, seed)]["image"].shape[0], ds[(0, seed)]["flipped"]) for seed in range(20)]
    assert {h for h, _ in draws} == {64, 80, 96} and {f for _, f in draws} == {True, False}
    assert ds[0]["image"].shape[0] == 96 and not ds[0]["flipped"]  # int key: last size, no flip


def test_collate_pads_to_multiple_of_32(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.json", _tiny_set(tmp_path))
    ds = CocoBoxDataset(path, supervision="mask", min_sizes=(50, 70), max_size=1000)
    samples = [ds[0], ds[(0, 1)], ds[(0, 2)], ds[(0, 5)]]
    batch = collate(samples)
    sizes = [tuple(s["image"].shape[:2]) for s in samples]
    b, hp, wp, c = batch["images"].shape
    assert (b, c) == (4, 3) and hp % 32 == 0 and wp % 32 == 0
    assert hp >= max(h for h, _ in sizes) and wp >= max(w for _, w in sizes)
    assert batch["image_sizes"].dtype == torch.int64 and batch["image_sizes"].tolist() == [list(s) for s in sizes]
    for i, (h, w) in enumerate(sizes):
        assert torch.equal(batch["images"][i, :h, :w], samples[i]["image"])
        assert batch["images"][i, h:].sum() == 0 and batch["images"][i, :, w:].sum() == 0
        t = batch["targets"][i]
        assert t["masks"].shape == (1, hp, wp) and torch.equal(t["masks"][:, :h, :w], samples[i]["masks"])
        assert torch.equal(t["boxes"], samples[i]["boxes"])
    assert batch["image_ids"] == [1, 1, 1, 1] and batch["orig_sizes"] == [(60, 80)] * 4
    assert len(batch["scales"]) == 4


def test_collate_box_mode_keeps_masks_none(shapes: dict) -> None:
    ds = CocoBoxDataset(shapes["train"], min_sizes=(64,), max_size=1000)
    batch = collate([ds[0], ds[1]], size_divisibility=128)
    assert batch["images"].shape == (2, 128, 128, 3)
    assert all(t["masks"] is None for t in batch["targets"])


def test_undecodable_segmentation_falls_back_to_box(tmp_path: Path) -> None:
    coco = _tiny_set(tmp_path)
    coco["annotations"][0]["segmentation"] = {"size": [60, 80], "counts": "!!corrupt"}
    ds = CocoBoxDataset(_write(tmp_path / "a.json", coco), supervision="mixed", min_sizes=(60,))
    s = ds[0]
    assert s["has_mask"].tolist() == [False] and s["masks"].sum() == 0
    assert s["boxes"].tolist() == [[10, 5, 40, 25]]
