"""`Instances`: lazy masks, COCO export, grasp geometry on shapes with a known pose, and a light
import (no torch)."""
from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import cv2
import numpy as np

from boxinst_serve.results import Instances, encode_masks


def _instances(masks: np.ndarray) -> Instances:
    n, h, w = masks.shape
    return Instances(boxes=np.zeros((n, 4), np.float32), scores=np.ones(n, np.float32),
                     classes=np.zeros(n, np.int64), rle=encode_masks(masks), image_size=(h, w), class_names=["box"])


def test_masks_decode_lazily_from_rle():
    m = np.zeros((2, 20, 30), bool)
    m[0, 2:5, 3:9] = True
    m[1, 10:20, 0:30] = True
    inst = _instances(m)
    assert inst._masks is None
    assert np.array_equal(inst.masks, m)
    assert inst.areas.tolist() == [18, 300]


def test_geometry_of_a_rotated_rectangle():
    h, w = 200, 240
    for angle in (0.0, 30.0, -55.0):
        mask = np.zeros((h, w), np.uint8)
        corners = cv2.boxPoints(((121.0, 97.0), (120.0, 40.0), angle))
        cv2.fillPoly(mask, [np.round(corners * 16).astype(np.int32)], 1, shift=4)
        geo = _instances(mask[None].astype(bool)).geometry()[0]
        assert abs(geo["centroid"][0] - 121.0) <= 1 and abs(geo["centroid"][1] - 97.0) <= 1
        # principal axis along the long side; image y points down, angles in (-90, 90]
        diff = (geo["angle_deg"] - angle + 90) % 180 - 90
        assert abs(diff) <= 2, (angle, geo["angle_deg"])
        size = sorted(geo["oriented_box"]["size"])
        assert abs(size[0] - 40) <= 2 and abs(size[1] - 120) <= 2
        assert abs(geo["area"] - 4800) <= 200  # rasterisation adds about half the perimeter
        assert len(geo["contours"]) == 1


def test_to_coco_uses_xywh_boxes_and_category_ids():
    m = np.zeros((1, 10, 10), bool)
    m[0, 1:4, 2:6] = True
    inst = _instances(m)
    inst.boxes[0] = [2, 1, 6, 4]
    entry = inst.to_coco(image_id=7, category_ids=[42])[0]
    assert entry["bbox"] == [2.0, 1.0, 4.0, 3.0] and entry["category_id"] == 42 and entry["image_id"] == 7
    assert isinstance(entry["segmentation"]["counts"], str)


def test_results_module_imports_without_torch():
    code = "import sys; sys.modules['torch'] = None; import boxinst_serve.results, boxinst_serve.config"
    subprocess.run([sys.executable, "-c", code], check=True)


def _light_client_imports() -> set[str]:
    """Top-level names of the third-party modules that boxinst_serve.client (shared memory too) and
    boxinst_serve.results import anywhere in their files (inside functions too: geometry's cv2)."""
    code = ("import sys, boxinst_serve.client, boxinst_serve.client.shm, boxinst_serve.results\n"
            "print('\\n'.join(m.__file__ for n, m in sys.modules.items() if n.startswith('boxinst_serve')))")
    files = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    names = set()
    for f in files:
        for node in ast.walk(ast.parse(Path(f).read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"boxinst_serve"}


def test_the_client_extra_installs_every_module_the_light_client_and_geometry_import():
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[\[<>=!~; ]", d)[0].lower()
                for d in project["dependencies"] + project["optional-dependencies"]["client"]}
    providers = importlib.metadata.packages_distributions()
    imports = _light_client_imports()
    assert {"numpy", "tritonclient", "pycocotools", "cv2"} <= imports
    missing = {m: providers.get(m) for m in imports if not declared & {d.lower() for d in providers.get(m, [])}}
    assert missing == {}, f"imported by the light client but not in the client extra: {missing}"


def test_geometry_without_opencv_names_the_extra_to_install():
    code = ("import sys; sys.modules['cv2'] = None\n"
            "import numpy as np\n"
            "from boxinst_serve.results import Instances, encode_masks\n"
            "inst = Instances(boxes=np.zeros((1, 4), np.float32), scores=np.ones(1, np.float32),\n"
            "                 classes=np.zeros(1, np.int64), rle=encode_masks(np.ones((1, 4, 4), bool)),\n"
            "                 image_size=(4, 4))\n"
            "inst.geometry()\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode != 0 and "pip install 'boxinst-serve[client]'" in run.stderr, run.stderr


def test_overlay_draws_one_of_several_labels_for_the_same_object():
    from boxinst_serve.visualize import displayed, draw_instances

    m = np.zeros((3, 40, 40), bool)
    m[0, 5:20, 5:20] = True
    m[1, 5:20, 6:20] = True  # the same object under another class
    m[2, 25:35, 25:35] = True
    inst = _instances(m)
    inst.scores[:] = [0.5, 0.6, 0.4]
    assert displayed(inst, score_thresh=0.3) == [1, 2]
    assert displayed(inst, score_thresh=0.45) == [1]
    drawn = draw_instances(np.zeros((40, 40, 3), np.uint8), inst)
    assert drawn[30, 30].any() and drawn.shape == (40, 40, 3)
