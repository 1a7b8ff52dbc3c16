"""matched_mask_iou (mask quality of matched detections), hole_fill_fraction and per_category_ap, against
hand-made cases."""
from __future__ import annotations

import contextlib
import io
import json

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from boxinst_serve.results import encode_masks
from training.evaluate import enclosed_holes, hole_fill_fraction, matched_mask_iou


def _gt(tmp_path):
    disk = np.zeros((64, 64), dtype=np.uint8)
    cv2.circle(disk, (32, 32), 16, 1, -1)
    rle = encode_masks(disk[None])[0]
    ys, xs = np.nonzero(disk)
    box = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
    coco = {"images": [{"id": 1, "width": 64, "height": 64, "file_name": "a.png"}],
            "categories": [{"id": 1, "name": "disk"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": box, "area": float(disk.sum()),
                             "iscrowd": 0, "segmentation": rle}]}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(coco))
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path)), rle, box


def test_exact_mask_scores_one_and_its_filled_box_the_disk_fraction(tmp_path):
    gt, rle, box = _gt(tmp_path)
    r = matched_mask_iou(gt, [{"image_id": 1, "category_id": 1, "bbox": box, "score": 0.9, "segmentation": rle}])
    assert r["matched"] == 1 and r["objects"] == 1
    assert r["mask_iou"] == 1.0
    disk_area = gt.anns[1]["area"]
    assert abs(r["filled_box_iou"] - disk_area / (box[2] * box[3])) < 1e-6  # disk area / box area


def test_low_scores_and_far_boxes_are_not_matched(tmp_path):
    gt, rle, box = _gt(tmp_path)
    far = [0.0, 0.0, 8.0, 8.0]
    r = matched_mask_iou(gt, [{"image_id": 1, "category_id": 1, "bbox": box, "score": 0.05, "segmentation": rle},
                              {"image_id": 1, "category_id": 1, "bbox": far, "score": 0.9, "segmentation": rle}])
    assert r["matched"] == 0 and r["mask_iou"] == 0.0


def test_per_category_ap_averages_to_the_overall_ap():
    from training.evaluate import coco_metrics, per_category_ap

    # Two categories: the disk is found exactly, the square is missed (a far-away detection).
    h = w = 64
    disk = np.zeros((h, w), np.uint8)
    cv2.circle(disk, (20, 20), 10, 1, -1)
    square = np.zeros((h, w), np.uint8)
    square[40:60, 40:60] = 1
    far = np.zeros((h, w), np.uint8)
    far[0:5, 50:60] = 1
    anns, rles = [], {}
    for i, (cat, m) in enumerate(((1, disk), (2, square)), start=1):
        rle = mask_utils.encode(np.asfortranarray(m))
        rle["counts"] = rle["counts"].decode("ascii")
        rles[cat] = rle
        anns.append({"id": i, "image_id": 1, "category_id": cat, "segmentation": rle, "area": int(m.sum()),
                     "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": 0})
    gt = COCO()
    gt.dataset = {"images": [{"id": 1, "height": h, "width": w}], "annotations": anns,
                  "categories": [{"id": 1, "name": "disk"}, {"id": 2, "name": "square"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    far_rle = mask_utils.encode(np.asfortranarray(far))
    far_rle["counts"] = far_rle["counts"].decode("ascii")
    preds = [{"image_id": 1, "category_id": 1, "segmentation": rles[1], "score": 0.9,
              "bbox": anns[0]["bbox"]},
             {"image_id": 1, "category_id": 2, "segmentation": far_rle, "score": 0.8,
              "bbox": [float(v) for v in mask_utils.toBbox(far_rle)]}]
    per = per_category_ap(gt, preds)
    assert per["disk"] == pytest.approx(100.0) and per["square"] == 0.0
    assert coco_metrics(gt, preds, "segm")["AP"] == pytest.approx(np.mean(list(per.values())))


def _disc_minus(cut_centre: tuple[int, int], cut_radius: int) -> np.ndarray:
    """A 64x64 uint8 disc of radius 20 at (32, 32) with a disc cut out of it."""
    m = np.zeros((64, 64), np.uint8)
    cv2.circle(m, (32, 32), 20, 1, -1)
    cv2.circle(m, cut_centre, cut_radius, 0, -1)
    return m


def test_enclosed_holes_finds_a_rings_middle_but_not_a_crescents_bite():
    ring = _disc_minus((32, 32), 10)
    middle = np.zeros((64, 64), np.uint8)
    cv2.circle(middle, (32, 32), 10, 1, -1)
    assert np.array_equal(enclosed_holes(ring), middle.astype(bool))
    crescent = _disc_minus((42, 32), 16)  # the cut reaches past the disc: open, no hole
    assert not enclosed_holes(crescent).any()
    assert not enclosed_holes(np.zeros((8, 8), np.uint8)).any()


def test_hole_fill_fraction_is_zero_for_the_true_ring_and_one_for_its_disc():
    ring = _disc_minus((32, 32), 10)
    disc = _disc_minus((0, 0), 0)
    half = disc.copy()
    half[:32] = ring[:32]  # the top half of the hole left empty
    rle = encode_masks(ring[None])[0]
    box = [float(v) for v in mask_utils.toBbox(dict(rle, counts=rle["counts"].encode("ascii")))]
    gt = COCO()
    gt.dataset = {"images": [{"id": 1, "height": 64, "width": 64}], "categories": [{"id": 1, "name": "ring"}],
                  "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": rle, "bbox": box,
                                   "area": int(ring.sum()), "iscrowd": 0}]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()

    def fill(mask):
        det = {"image_id": 1, "category_id": 1, "bbox": box, "score": 0.9, "segmentation": encode_masks(mask[None])[0]}
        return hole_fill_fraction(gt, [det])

    assert fill(ring) == {"objects": 1, "matched": 1, "filled": 0.0}
    assert fill(disc)["filled"] == 1.0
    assert 0.4 < fill(half)["filled"] < 0.6
