"""Synthetic shapes set: COCO layout, exact masks, determinism."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from training.shapes import CATEGORIES, make_shapes, render_image


@pytest.fixture(scope="module")
def shapes_set(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("shapes")
    return make_shapes(out, num_images=30, seed=3, size=128, progress=False)


def _load_coco(path: str) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(path)


def test_layout_and_split(shapes_set: dict) -> None:
    assert shapes_set["num_train"] == 24 and shapes_set["num_val"] == 6
    train, val = (json.loads(Path(shapes_set[s]).read_text()) for s in ("train", "val"))
    ids_train = {im["id"] for im in train["images"]}
    ids_val = {im["id"] for im in val["images"]}
    assert len(ids_train) == 24 and len(ids_val) == 6 and not ids_train & ids_val
    for im in train["images"] + val["images"]:
        assert im["width"] == 128 and im["height"] == 128
        assert (Path(shapes_set["images"]) / im["file_name"]).is_file()
        assert "/" not in im["file_name"]
    ann_ids = [a["id"] for a in train["annotations"] + val["annotations"]]
    assert len(ann_ids) == len(set(ann_ids))


def test_categories() -> None:
    assert len(CATEGORIES) >= 6
    assert [c["id"] for c in CATEGORIES] == list(range(1, len(CATEGORIES) + 1))
    names = {c["name"] for c in CATEGORIES}
    assert {"ring", "star"} <= names


def test_rle_matches_area_and_bbox(shapes_set: dict) -> None:
    coco = _load_coco(shapes_set["train"])
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) >= 24
    for ann in anns:
        assert isinstance(ann["segmentation"]["counts"], str)
        m = coco.annToMask(ann)
        assert m.shape == (128, 128)
        assert int(m.sum()) == ann["area"] >= 64
        ys, xs = np.nonzero(m)
        x, y, w, h = ann["bbox"]
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)
        assert ann["iscrowd"] == 0


def test_images_are_rgb_pngs_matching_render(shapes_set: dict) -> None:
    img_bgr = cv2.imread(str(Path(shapes_set["images"]) / "000000.png"))
    image, _ = render_image(np.random.default_rng([3, 0]), 128)
    np.testing.assert_array_equal(cv2.cvtColor(img_bgr, cv2.COLOR_BGR2RGB), image)


def test_deterministic(tmp_path: Path) -> None:
    a = make_shapes(tmp_path / "a", num_images=6, seed=7, size=96, progress=False)
    b = make_shapes(tmp_path / "b", num_images=6, seed=7, size=96, progress=False)
    c = make_shapes(tmp_path / "c", num_images=6, seed=8, size=96, progress=False)
    for split in ("train", "val"):
        assert Path(a[split]).read_bytes() == Path(b[split]).read_bytes()
    assert Path(a["train"]).read_bytes() != Path(c["train"]).read_bytes()
    assert (Path(a["images"]) / "000003.png").read_bytes() == (Path(b["images"]) / "000003.png").read_bytes()
    assert not list(Path(a["train"]).parent.glob("*.tmp"))


def test_small_sets_split() -> None:
    from training.shapes import _num_val

    assert _num_val(1, 0.2) == 0
    assert _num_val(2, 0.2) == 1
    assert _num_val(10, 0.2) == 2


def test_ring_has_hole() -> None:
    ring_id = next(c["id"] for c in CATEGORIES if c["name"] == "ring")
    found = False
    for i in range(40):
        _, instances = render_image(np.random.default_rng([11, i]), 160)
        for cat_id, mask in instances:
            if cat_id != ring_id:
                continue
            ys, xs = np.nonzero(mask)
            cy, cx = (ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2
            if not mask[cy, cx]:
                found = True
    assert found


def test_render_instances_visible_and_disjoint() -> None:
    rng = np.random.default_rng(0)
    for _ in range(10):
        image, instances = render_image(rng, 128)
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
        assert 0 <= len(instances) <= 6
        total = np.zeros((128, 128), dtype=int)
        for cat_id, mask in instances:
            assert mask.dtype == bool and mask.sum() >= 64
            assert 1 <= cat_id <= len(CATEGORIES)
            total += mask
        assert total.max() <= 1  # visible parts never overlap


def test_object_colour_differs_from_background() -> None:
    image, instances = render_image(np.random.default_rng(5), 160)
    assert instances
    for _, mask in instances:
        inner = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        ring = cv2.dilate(mask.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool) & ~mask
        if inner.sum() < 20 or ring.sum() < 20:
            continue
        diff = image[inner].astype(float).mean(0) - image[ring].astype(float).mean(0)
        assert np.abs(diff).max() > 15


def test_rle_roundtrip_encoding() -> None:
    _, instances = render_image(np.random.default_rng(2), 96)
    from training.shapes import mask_to_annotation

    for k, (cat, m) in enumerate(instances):
        ann = mask_to_annotation(m, cat, k + 1, 1)
        rle = dict(ann["segmentation"], counts=ann["segmentation"]["counts"].encode())
        np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), m)
