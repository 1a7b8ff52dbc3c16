"""boxinst_serve.coco: segmentation encodings, box IoU and ground-truth-to-detection matching,
against hand-computed cases."""
from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from boxinst_serve.coco import box_ious, mask_iou, match_to_detections, segmentation_to_rle


def _area(rle) -> int:
    return int(mask_utils.area(rle))


def test_every_coco_encoding_gives_the_same_mask():
    square = [[2, 2, 8, 2, 8, 8, 2, 8]]  # 6 x 6 pixels
    rle = segmentation_to_rle(square, 10, 12)
    assert rle["size"] == [10, 12] and _area(rle) == 36
    m = mask_utils.decode(rle)
    str_counts = {"size": [10, 12], "counts": rle["counts"].decode("ascii")}
    uncompressed = {"size": [10, 12], "counts": _runs(m)}
    for seg in (str_counts, dict(rle), uncompressed):
        assert np.array_equal(mask_utils.decode(segmentation_to_rle(seg, 10, 12)), m)
    assert mask_iou(rle, str_counts) == 1.0


def _runs(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts (column-major runs, starting with zeros)."""
    flat = mask.flatten(order="F")
    runs, value, n = [], 0, 0
    for v in flat:
        if v == value:
            n += 1
        else:
            runs.append(int(n))
            value, n = v, 1
    return runs + [int(n)]


@pytest.mark.parametrize("seg", [None, [], [[1, 2, 3, 4]], {}])
def test_a_segmentation_without_a_shape_is_none(seg):
    assert segmentation_to_rle(seg, 10, 10) is None


def test_short_polygons_are_ignored_beside_valid_ones():
    assert _area(segmentation_to_rle([[0, 0, 1, 1], [2, 2, 8, 2, 8, 8, 2, 8]], 10, 10)) == 36


def test_box_ious_hand_cases():
    gt = [[0, 0, 10, 10], [100, 100, 0, 5]]  # the second has zero area
    det = [[5, 0, 10, 10], [0, 0, 10, 10], [50, 50, 10, 10]]
    ious = box_ious(gt, det)
    assert ious.shape == (2, 3)
    assert ious[0].tolist() == pytest.approx([50 / 150, 1.0, 0.0])
    assert ious[1].tolist() == [0.0, 0.0, 0.0]  # no NaN for an empty box
    assert box_ious([], det).shape == (0, 3) and box_ious(gt, np.zeros((0, 4))).shape == (2, 0)


def test_matching_prefers_the_objects_class_above_the_threshold():
    gt = [[0, 0, 10, 10]]
    det = [[0, 0, 10, 10], [1, 0, 10, 10], [50, 50, 10, 10]]  # IoU 1.0, 0.9/1.1 = 0.82, 0
    assert match_to_detections(gt, det, 0.5) == [0]
    assert match_to_detections(gt, det, 0.5, [2], [1, 2, 2]) == [1]  # same class wins over higher IoU
    assert match_to_detections(gt, det, 0.5, [3], [1, 2, 2]) == [0]  # no detection of its class: best IoU
    assert match_to_detections(gt, det, 0.5, [None], [1, 2, 2]) == [0]
    assert match_to_detections(gt, det, 0.85, [2], [1, 2, 2]) == [0]  # the same-class one is below it
    assert match_to_detections(gt, det, 1.01) == [None]
    assert match_to_detections(gt, [], 0.5) == [None]
