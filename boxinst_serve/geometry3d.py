"""3-D grasp geometry of instance masks from an aligned depth image and pinhole intrinsics.

Numpy only (the light client imports it through `boxinst_serve.results`, without torch or OpenCV).

Conventions: the camera frame of OpenCV and ROS optical frames: x right, y down, z forward
(along the optical axis), metres. Pixel (u, v) is column u, row v of the image, with pixel
centres at integer coordinates; a pixel with depth z back-projects to
`((u - cx) * z / fx, (v - cy) * z / fy, z)`. Depth is the z coordinate (as RGB-D cameras
give it aligned to the colour image), not the distance along the ray.

Per instance (`mask_geometry_3d`), from the mask's pixels with valid depth (finite and > 0;
0 and NaN are "no reading"):
- `valid_px`: how many mask pixels had valid depth;
- `centroid_m`: mean of their 3-D points;
- `axes`: principal axes (rows, unit vectors), by decreasing spread of the points; a right-handed
  frame (axes[0] x axes[1] = axes[2]) whose last axis, the direction of least spread (the surface
  normal of a flat face), points away from the camera;
- `extent_m`: max - min of the points' coordinates along each axis (from pixel centres, so a
  face w pixels wide at depth z measures (w - 1) * z / fx);
- `approach`: axes[2], the direction a gripper moves in to reach the object;
- `closing_axis`: axes[1], the direction a parallel-jaw gripper closes in (across the narrower
  in-plane side); `grasp_width_m`: extent_m[1];
- `grasp_point_m`: the valid point nearest to the line through the centroid along `approach`:
  a point on the visible surface (a suction cup's or fingertip's target) even where the centroid
  is off the object (rings, L shapes).
With fewer than 3 valid points the axes and everything derived from them are None; with none at
all the centroid is None too."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence, Union

import numpy as np

MIN_PCA_POINTS = 3


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels: focal lengths fx, fy and principal point cx, cy."""

    fx: float
    fy: float
    cx: float
    cy: float

    def __post_init__(self) -> None:
        for name in ("fx", "fy", "cx", "cy"):
            if not np.isfinite(getattr(self, name)):
                raise ValueError(f"intrinsics: {name} must be finite, got {getattr(self, name)}")
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"intrinsics: fx and fy must be > 0, got fx={self.fx}, fy={self.fy}")

    @classmethod
    def of(cls, value: "IntrinsicsLike") -> "Intrinsics":
        """An Intrinsics, a (fx, fy, cx, cy) sequence, a mapping with those keys, or a 3x3 camera
        matrix K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]."""
        if isinstance(value, Intrinsics):
            return value
        if isinstance(value, Mapping):
            missing = [k for k in ("fx", "fy", "cx", "cy") if k not in value]
            if missing:
                raise ValueError(f"intrinsics mapping lacks {', '.join(missing)}")
            return cls(*(float(value[k]) for k in ("fx", "fy", "cx", "cy")))
        a = np.asarray(value, dtype=np.float64)
        if a.shape == (3, 3):
            return cls(float(a[0, 0]), float(a[1, 1]), float(a[0, 2]), float(a[1, 2]))
        if a.shape == (4,):
            return cls(*(float(v) for v in a))
        raise ValueError(f"intrinsics must be (fx, fy, cx, cy), a mapping of those or a 3x3 matrix, "
                         f"got shape {a.shape}")


IntrinsicsLike = Union[Intrinsics, Sequence[float], Mapping[str, float], np.ndarray]


def depth_in_metres(depth: np.ndarray, depth_scale: float = 1.0) -> np.ndarray:
    """depth [H, W] (any real dtype; e.g. uint16 millimetres with depth_scale=0.001) -> float64
    metres [H, W] with NaN wherever there is no valid reading (0, negative, NaN, inf)."""
    d = np.asarray(depth)
    if d.ndim == 3 and d.shape[2] == 1:
        d = d[..., 0]
    if d.ndim != 2:
        raise ValueError(f"depth must be a [H, W] image, got shape {d.shape}")
    if not (np.issubdtype(d.dtype, np.integer) or np.issubdtype(d.dtype, np.floating)):
        raise ValueError(f"depth must hold numbers, got dtype {d.dtype}")
    if not np.isfinite(depth_scale) or depth_scale <= 0:
        raise ValueError(f"depth_scale (metres per depth unit) must be > 0, got {depth_scale}")
    m = d.astype(np.float64) * float(depth_scale)
    m[~(np.isfinite(m) & (m > 0))] = np.nan
    return m


def backproject(u: np.ndarray, v: np.ndarray, z_m: np.ndarray, k: Intrinsics) -> np.ndarray:
    """Pixel columns u [N], rows v [N] and depths z_m [N] -> camera-frame points [N, 3] (metres)."""
    z = np.asarray(z_m, dtype=np.float64)
    return np.stack([(np.asarray(u, np.float64) - k.cx) * z / k.fx,
                     (np.asarray(v, np.float64) - k.cy) * z / k.fy, z], axis=1)


def principal_frame(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """points [N, 3], N >= 3 -> (centroid [3], axes [3, 3] rows by decreasing variance, the frame
    right-handed with axes[2] pointing away from the camera, extents [3] max - min along them)."""
    c = points.mean(axis=0)
    d = points - c
    _, vecs = np.linalg.eigh(d.T @ d)  # ascending eigenvalues; columns are eigenvectors
    major, minor = vecs[:, 2], vecs[:, 0]
    # Signs: the approach (least spread) points away from the camera, i.e. along the viewing ray
    # to the centroid; the major axis points to +x (then +y) so that repeated calls agree.
    if float(minor @ c) < 0:
        minor = -minor
    first = next((float(a) for a in major if abs(a) > 1e-9), 1.0)
    if first < 0:
        major = -major
    middle = np.cross(minor, major)
    axes = np.stack([major, middle, minor])
    proj = d @ axes.T
    return c, axes, proj.max(axis=0) - proj.min(axis=0)


def mask_geometry_3d(mask: np.ndarray, depth_m: np.ndarray, intrinsics: IntrinsicsLike) -> dict[str, Any]:
    """One mask bool [H, W] and depth in metres [H, W] (NaN = invalid, see depth_in_metres) ->
    the dict described in the module docstring (lists of floats, JSON-ready)."""
    k = Intrinsics.of(intrinsics)
    if mask.shape != depth_m.shape:
        raise ValueError(f"mask is {mask.shape[1]}x{mask.shape[0]} px but depth is "
                         f"{depth_m.shape[1]}x{depth_m.shape[0]} px: align the depth image to the colour frame")
    v, u = np.nonzero(mask)
    z = depth_m[v, u]
    ok = np.isfinite(z)
    out: dict[str, Any] = {"valid_px": int(ok.sum()), "centroid_m": None, "axes": None, "extent_m": None,
                           "approach": None, "closing_axis": None, "grasp_width_m": None, "grasp_point_m": None}
    if not ok.any():
        return out
    pts = backproject(u[ok], v[ok], z[ok], k)
    if len(pts) < MIN_PCA_POINTS:
        c = pts.mean(axis=0)
        out.update(centroid_m=c.tolist(), grasp_point_m=pts[np.argmin(np.linalg.norm(pts - c, axis=1))].tolist())
        return out
    c, axes, extent = principal_frame(pts)
    approach = axes[2]
    d = pts - c
    off_axis = d - np.outer(d @ approach, approach)
    grasp = pts[int(np.argmin(np.einsum("ij,ij->i", off_axis, off_axis)))]
    out.update(centroid_m=c.tolist(), axes=axes.tolist(), extent_m=extent.tolist(), approach=approach.tolist(),
               closing_axis=axes[1].tolist(), grasp_width_m=float(extent[1]), grasp_point_m=grasp.tolist())
    return out


def masks_geometry_3d(masks: np.ndarray, depth: np.ndarray, intrinsics: IntrinsicsLike,
                      depth_scale: float = 1.0) -> list[dict[str, Any]]:
    """masks bool [N, H, W], depth [H, W] in units of depth_scale metres -> N dicts (see
    mask_geometry_3d)."""
    k = Intrinsics.of(intrinsics)
    depth_m = depth_in_metres(depth, depth_scale)
    if masks.ndim != 3:
        raise ValueError(f"masks must be [N, H, W], got shape {masks.shape}")
    if masks.shape[1:] != depth_m.shape:
        raise ValueError(f"the image is {masks.shape[2]}x{masks.shape[1]} px but depth is "
                         f"{depth_m.shape[1]}x{depth_m.shape[0]} px: align the depth image to the colour frame")
    return [mask_geometry_3d(m, depth_m, k) for m in masks]
