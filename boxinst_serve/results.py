"""`Instances`: the one vocabulary for results (numpy and pycocotools only: no torch), with lazy
mask decoding and per-instance geometry for grasping."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from boxinst_serve.geometry3d import IntrinsicsLike, masks_geometry_3d


def _mask_utils():
    from pycocotools import mask as mask_utils  # imported lazily: light clients may lack it

    return mask_utils


def encode_masks(masks: np.ndarray) -> list[dict[str, Any]]:
    """bool/uint8 [N, H, W] -> COCO RLEs ({"size": [H, W], "counts": str})."""
    if len(masks) == 0:
        return []
    rles = _mask_utils().encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for r in rles:
        r["counts"] = r["counts"].decode("ascii")
    return list(rles)


@dataclass
class Instances:
    """Detections of one image, in original image pixels.

    boxes [N, 4] float32 x0, y0, x1, y1; scores [N]; classes [N] int (0..C-1); rle: N COCO RLEs
    at the original resolution; image_size (h, w). `masks` decodes lazily to bool [N, H, W].
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    rle: list[dict[str, Any]]
    image_size: tuple[int, int]
    class_names: list[str] = field(default_factory=list)
    _masks: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(len(self.scores))

    @property
    def masks(self) -> np.ndarray:
        if self._masks is None:
            h, w = self.image_size
            if not self.rle:
                self._masks = np.zeros((0, h, w), dtype=bool)
            else:
                rles = [{"size": r["size"], "counts": r["counts"].encode("ascii") if isinstance(r["counts"], str)
                         else r["counts"]} for r in self.rle]
                self._masks = _mask_utils().decode(rles).transpose(2, 0, 1).astype(bool)
        return self._masks

    @property
    def areas(self) -> np.ndarray:
        if not self.rle:
            return np.zeros(0, dtype=np.int64)
        rles = [{"size": r["size"], "counts": r["counts"].encode("ascii") if isinstance(r["counts"], str)
                 else r["counts"]} for r in self.rle]
        return _mask_utils().area(rles).astype(np.int64)

    def class_name(self, i: int) -> str:
        c = int(self.classes[i])
        return self.class_names[c] if c < len(self.class_names) else str(c)

    def to_coco(self, image_id: int, category_ids: list[int] | None = None) -> list[dict[str, Any]]:
        """COCO results entries (bbox [x, y, w, h], score, category_id, segmentation RLE)."""
        out = []
        for i in range(len(self)):
            x0, y0, x1, y1 = (float(v) for v in self.boxes[i])
            c = int(self.classes[i])
            out.append({"image_id": int(image_id),
                        "category_id": int(category_ids[c]) if category_ids else c,
                        "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(self.scores[i]),
                        "segmentation": self.rle[i]})
        return out

    def geometry(self, depth: np.ndarray | None = None, intrinsics: IntrinsicsLike | None = None,
                 depth_scale: float = 1.0) -> list[dict[str, Any]]:
        """Per-instance grasp geometry from the mask: area (px), centroid (x, y), principal-axis
        angle (degrees, from image moments, in (-90, 90]), oriented min-area rectangle (centre,
        size, angle as OpenCV gives it), and outer contour polygons.

        With an aligned depth image [H, W] (metres, or other units with `depth_scale` metres per
        unit, e.g. 0.001 for uint16 millimetres) and pinhole `intrinsics` (fx, fy, cx, cy), each
        dict also holds "3d": the 3-D centroid, principal axes, extents, a grasp point and
        approach direction in the camera frame, and the count of valid-depth pixels
        (boxinst_serve.geometry3d; depth 0 or NaN is ignored)."""
        try:
            import cv2
        except ImportError as e:  # the client extra installs it (opencv-python-headless)
            raise ImportError("Instances.geometry() needs OpenCV for the contours and oriented boxes: "
                              "`pip install 'boxinst-serve[client]'` (or opencv-python-headless); "
                              "geometry_3d() needs only numpy") from e

        result = []
        for m in self.masks:
            m8 = m.astype(np.uint8)
            mom = cv2.moments(m8, binaryImage=True)
            area = int(m8.sum())
            if mom["m00"] == 0:
                result.append({"area": 0, "centroid": None, "angle_deg": None, "oriented_box": None,
                               "contours": []})
                continue
            cx, cy = mom["m10"] / mom["m00"], mom["m01"] / mom["m00"]
            angle = 0.5 * math.degrees(math.atan2(2 * mom["mu11"], mom["mu20"] - mom["mu02"]))
            contours, _ = cv2.findContours(m8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            pts = np.concatenate(contours).reshape(-1, 2)
            (rx, ry), (rw, rh), ra = cv2.minAreaRect(pts.astype(np.float32))
            result.append({"area": area, "centroid": [cx, cy], "angle_deg": angle,
                           "oriented_box": {"center": [rx, ry], "size": [rw, rh], "angle_deg": ra},
                           "contours": [c.reshape(-1, 2).tolist() for c in contours]})
        if depth is not None or intrinsics is not None:
            for g, g3 in zip(result, self.geometry_3d(depth, intrinsics, depth_scale)):
                g["3d"] = g3
        return result

    def geometry_3d(self, depth: np.ndarray, intrinsics: IntrinsicsLike, depth_scale: float = 1.0
                    ) -> list[dict[str, Any]]:
        """Only the 3-D part of geometry() (numpy only, no OpenCV): one dict per instance with
        valid_px, centroid_m, axes, extent_m, approach, closing_axis, grasp_width_m and
        grasp_point_m, in the camera frame (x right, y down, z forward; metres)."""
        if depth is None or intrinsics is None:
            raise ValueError("3-D geometry needs both depth (aligned to the image) and intrinsics (fx, fy, cx, cy)")
        d = np.asarray(depth)
        if d.shape[:2] != tuple(self.image_size):
            raise ValueError(f"depth is {d.shape[1] if d.ndim > 1 else '?'}x{d.shape[0]} px but the instances are "
                             f"for a {self.image_size[1]}x{self.image_size[0]} px image: align the depth image to "
                             "the colour frame")
        return masks_geometry_3d(self.masks, d, intrinsics, depth_scale)
