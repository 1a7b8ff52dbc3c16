"""matched_mask_iou: mask quality of matched detections, against hand-made cases."""
from __future__ import annotations

import contextlib
import io
import json

import cv2
import numpy as np
from pycocotools.coco import COCO

from boxinst_serve.results import encode_masks
from training.evaluate import matched_mask_iou


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
