"""3-D grasp geometry from depth (`Instances.geometry(depth=..., intrinsics=...)`) on synthetic
depth images with known answers: a plane facing the camera, a tilted plane, a rotated box on a
table, a ring, invalid depth, and the unit and argument handling."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from boxinst_serve.geometry3d import Intrinsics, mask_geometry_3d, depth_in_metres
from boxinst_serve.results import Instances, encode_masks

K = Intrinsics(fx=200.0, fy=200.0, cx=80.0, cy=60.0)
H, W = 120, 160


def _instances(masks: np.ndarray) -> Instances:
    n, h, w = masks.shape
    return Instances(boxes=np.zeros((n, 4), np.float32), scores=np.ones(n, np.float32),
                     classes=np.zeros(n, np.int64), rle=encode_masks(masks), image_size=(h, w))


def _rays() -> tuple[np.ndarray, np.ndarray]:
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    return (u - K.cx) / K.fx, (v - K.cy) / K.fy


def _rectangle() -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[40:61, 50:91] = True  # rows 40..60 (21), columns 50..90 (41)
    return mask


def test_plane_facing_the_camera():
    mask = _rectangle()
    depth = np.full((H, W), 0.8)
    g = _instances(mask[None]).geometry(depth=depth, intrinsics=K)[0]["3d"]
    assert g["valid_px"] == 21 * 41
    # pixel centroid (70, 50) back-projected at z = 0.8
    np.testing.assert_allclose(g["centroid_m"], [(70 - 80) * 0.8 / 200, (50 - 60) * 0.8 / 200, 0.8], atol=1e-12)
    np.testing.assert_allclose(g["axes"], np.eye(3), atol=1e-9)  # longer side along x, normal towards +z
    np.testing.assert_allclose(g["extent_m"], [40 * 0.8 / 200, 20 * 0.8 / 200, 0.0], atol=1e-9)
    np.testing.assert_allclose(g["approach"], [0, 0, 1], atol=1e-9)
    np.testing.assert_allclose(g["closing_axis"], [0, 1, 0], atol=1e-9)
    assert g["grasp_width_m"] == pytest.approx(0.08)
    np.testing.assert_allclose(g["grasp_point_m"], g["centroid_m"], atol=1e-12)  # pixel (70, 50) is on the face


def test_millimetres_with_a_scale_equal_metres():
    mask = _rectangle()
    metres = _instances(mask[None]).geometry_3d(np.full((H, W), 0.8), K)[0]
    mm = _instances(mask[None]).geometry_3d(np.full((H, W), 800, np.uint16), K, depth_scale=0.001)[0]
    for key in ("centroid_m", "axes", "extent_m", "grasp_point_m"):
        np.testing.assert_allclose(mm[key], metres[key], atol=1e-9)
    assert mm["valid_px"] == metres["valid_px"]


def test_zero_and_nan_depth_are_ignored_and_counted_out():
    mask = _rectangle()
    depth = np.full((H, W), 0.8)
    depth[~mask] = 5.0  # the background must not matter
    depth[40:61, 71:81] = 0.0  # columns 71..90 have no reading: 0 or NaN
    depth[40:61, 81:91] = np.nan
    g = _instances(mask[None]).geometry_3d(depth, K)[0]
    assert g["valid_px"] == 21 * 21  # columns 50..70 remain
    np.testing.assert_allclose(g["centroid_m"], [(60 - 80) * 0.8 / 200, (50 - 60) * 0.8 / 200, 0.8], atol=1e-12)
    np.testing.assert_allclose(g["extent_m"], [20 * 0.8 / 200, 20 * 0.8 / 200, 0.0], atol=1e-9)


def test_tilted_plane_gives_its_normal_as_approach():
    tilt = math.radians(30)
    normal = np.array([0.0, -math.sin(tilt), math.cos(tilt)])  # plane n . p = 0.9, facing the camera
    ru, rv = _rays()
    depth = 0.9 / (normal[0] * ru + normal[1] * rv + normal[2])
    g = _instances(_rectangle()[None]).geometry_3d(depth, K)[0]
    np.testing.assert_allclose(g["approach"], normal, atol=1e-9)
    assert g["extent_m"][2] == pytest.approx(0.0, abs=1e-9)
    c = np.array(g["centroid_m"])
    assert c @ normal == pytest.approx(0.9)  # the centroid of coplanar points lies on the plane
    axes = np.array(g["axes"])
    np.testing.assert_allclose(axes @ axes.T, np.eye(3), atol=1e-9)
    np.testing.assert_allclose(np.cross(axes[0], axes[1]), axes[2], atol=1e-9)  # right-handed


def test_rotated_box_on_a_table():
    """A 0.20 x 0.10 m box, top face 0.05 m above a table 1.0 m away, rotated 30 deg about the
    optical axis, centred at (0.02, -0.01) m: the mask is the box's top face."""
    ru, rv = _rays()
    top_z, centre, angle = 0.95, np.array([0.02, -0.01]), math.radians(30)
    x, y = ru * top_z - centre[0], rv * top_z - centre[1]
    along = x * math.cos(angle) + y * math.sin(angle)
    across = -x * math.sin(angle) + y * math.cos(angle)
    on_box = (np.abs(along) <= 0.10) & (np.abs(across) <= 0.05)
    depth = np.where(on_box, top_z, 1.0)
    g = _instances(on_box[None]).geometry(depth=depth, intrinsics=K)[0]["3d"]
    pixel_m = top_z / K.fx  # one pixel at the box top: 4.75 mm
    np.testing.assert_allclose(g["centroid_m"][:2], centre, atol=pixel_m / 2)
    assert g["centroid_m"][2] == pytest.approx(top_z)
    major = np.array(g["axes"][0])
    assert abs(major @ [math.cos(angle), math.sin(angle), 0.0]) > math.cos(math.radians(1.5))
    np.testing.assert_allclose(g["approach"], [0, 0, 1], atol=1e-9)
    np.testing.assert_allclose(g["extent_m"][:2], [0.20, 0.10], atol=2 * pixel_m)
    assert g["grasp_width_m"] == pytest.approx(0.10, abs=2 * pixel_m)
    np.testing.assert_allclose(g["grasp_point_m"][:2], centre, atol=pixel_m)
    assert g["valid_px"] == int(on_box.sum())


def test_grasp_point_of_a_ring_lies_on_the_ring():
    v, u = np.mgrid[0:H, 0:W]
    r = np.hypot(u - 80, v - 60)
    ring = (r >= 20) & (r <= 30)
    g = mask_geometry_3d(ring, np.full((H, W), 0.5), K)
    np.testing.assert_allclose(g["centroid_m"], [0, 0, 0.5], atol=1e-12)  # in the hole
    gp = np.array(g["grasp_point_m"])
    pu, pv = gp[0] * K.fx / gp[2] + K.cx, gp[1] * K.fy / gp[2] + K.cy
    assert ring[int(round(pv)), int(round(pu))]
    assert np.hypot(pu - 80, pv - 60) == pytest.approx(20, abs=0.5)  # the inner edge: nearest the axis


def test_no_or_too_few_valid_points():
    mask = _rectangle()
    depth = np.zeros((H, W))
    g = mask_geometry_3d(mask, depth_in_metres(depth), K)
    assert g["valid_px"] == 0 and g["centroid_m"] is None and g["axes"] is None and g["grasp_point_m"] is None
    depth[45, 60] = depth[45, 61] = 1.0
    g = mask_geometry_3d(mask, depth_in_metres(depth), K)
    assert g["valid_px"] == 2 and g["axes"] is None and g["approach"] is None
    np.testing.assert_allclose(g["centroid_m"], [(60.5 - 80) / 200, (45 - 60) / 200, 1.0])


def test_intrinsics_forms_agree_and_bad_arguments_are_named():
    mask = _rectangle()[None]
    depth = np.full((H, W), 0.8)
    inst = _instances(mask)
    want = inst.geometry_3d(depth, K)[0]["centroid_m"]
    for form in ((200, 200, 80, 60), {"fx": 200, "fy": 200, "cx": 80, "cy": 60},
                 np.array([[200, 0, 80], [0, 200, 60], [0, 0, 1]])):
        assert inst.geometry_3d(depth, form)[0]["centroid_m"] == want
    with pytest.raises(ValueError, match="depth is 100x120 px but the instances are for a 160x120 px image"):
        inst.geometry_3d(np.ones((120, 100)), K)
    with pytest.raises(ValueError, match="fx and fy must be > 0"):
        inst.geometry_3d(depth, (0, 200, 80, 60))
    with pytest.raises(ValueError, match="depth_scale"):
        inst.geometry_3d(depth, K, depth_scale=0)
    with pytest.raises(ValueError, match="needs both depth"):
        inst.geometry(depth=depth)
    assert "3d" not in inst.geometry()[0]


def test_3d_geometry_needs_neither_torch_nor_opencv():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['cv2'] = None\n"
            "import numpy as np\n"
            "from boxinst_serve.results import Instances\n"
            "m = np.zeros((1, 20, 30), bool); m[0, 5:10, 5:20] = True\n"
            "inst = Instances(np.zeros((1, 4), np.float32), np.ones(1, np.float32), np.zeros(1, np.int64), [],\n"
            "                 (20, 30), _masks=m)\n"
            "g = inst.geometry_3d(np.full((20, 30), 1.0), (100, 100, 15, 10))[0]\n"
            "assert g['valid_px'] == 75, g\n")
    subprocess.run([sys.executable, "-c", code], check=True)
