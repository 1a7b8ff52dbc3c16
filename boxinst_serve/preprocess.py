"""Image decoding and network-input preparation shared by every inference path
(in-process engines, the Triton preprocess step, evaluation)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from boxinst_serve.config import ModelConfig, pad_value, padded_size, resized_shape

DEFAULT_MAX_PIXELS = 50_000_000


class ImageDecodeError(ValueError):
    """An input that is not a decodable image (names the source)."""


@dataclass(frozen=True)
class ImageMeta:
    """Where a network input came from: original and resized (unpadded) sizes, (h, w)."""

    orig_hw: tuple[int, int]
    resized_hw: tuple[int, int]


def _to_rgb_uint8(img: np.ndarray, source: str) -> np.ndarray:
    """Any decoded OpenCV image (gray, BGR, BGRA; 8 or 16 bit) -> RGB uint8 [H, W, 3]."""
    if img.dtype == np.uint16:
        img = (img / 257.0 + 0.5).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageDecodeError(f"{source}: unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    if img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    raise ImageDecodeError(f"{source}: unsupported channel count {img.shape[2]}")


def image_header_size(data: bytes) -> tuple[int, int] | None:
    """(h, w) read from a PNG or JPEG header without decoding pixels, or None if unknown."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big")
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            seg_len = int.from_bytes(data[i + 2:i + 4], "big")
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                return int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 7:i + 9], "big")
            i += 2 + seg_len
    return None


def decode_image(data: bytes | bytearray | np.ndarray, source: str = "image",
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded bytes (JPEG, PNG, ...) -> RGB uint8 [H, W, 3], EXIF orientation applied.

    Refuses images whose header claims more than `max_pixels` before decoding them."""
    buf = np.frombuffer(bytes(data), dtype=np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1)
    if buf.size == 0:
        raise ImageDecodeError(f"{source}: empty input")
    hw = image_header_size(buf[:65536].tobytes())
    if hw is not None and hw[0] * hw[1] > max_pixels:
        raise ImageDecodeError(f"{source}: image is {hw[1]}x{hw[0]} px, over the {max_pixels / 1e6:g} MP limit "
                               "(max_pixels)")
    if buf[:2].tobytes() == b"\xff\xd8":
        raw = buf.tobytes()
        if raw.rfind(b"\xff\xd9") < raw.rfind(b"\xff\xda"):  # no end-of-image after the last scan
            raise ImageDecodeError(f"{source}: truncated JPEG (no end-of-image marker after the image data)")
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageDecodeError(f"{source}: not a decodable image (corrupt, truncated or unsupported format)")
    if img.shape[0] * img.shape[1] > max_pixels:
        raise ImageDecodeError(f"{source}: image is {img.shape[1]}x{img.shape[0]} px, over the "
                               f"{max_pixels / 1e6:g} MP limit (max_pixels)")
    if img.dtype == np.uint8 or img.dtype == np.uint16:
        # IMREAD_UNCHANGED ignores EXIF orientation: decode the orientation flag separately.
        oriented = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        if oriented is not None and oriented.shape[:2] != img.shape[:2] and oriented.shape[:2] == img.shape[1::-1]:
            return cv2.cvtColor(oriented, cv2.COLOR_BGR2RGB)
    return _to_rgb_uint8(img, source)


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file -> RGB uint8 [H, W, 3]; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image '{path}' does not exist")
    return decode_image(path.read_bytes(), source=str(path), max_pixels=max_pixels)


def resize_image(image: np.ndarray, min_size: int, max_size: int, mode: str = "opencv") -> np.ndarray:
    """RGB uint8 [H, W, 3] -> resized so the shorter side is min_size (longer capped at max_size).
    mode "opencv": cv2 INTER_LINEAR; "detectron2": PIL bilinear on uint8 (antialiased when
    shrinking) with detectron2's size arithmetic, as AdelaiDet's own inference resizes."""
    h, w = image.shape[:2]
    nh, nw = resized_shape(h, w, min_size, max_size, mode)
    if (nh, nw) == (h, w):
        return image
    if mode == "detectron2":
        from PIL import Image

        return np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
    return cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)


def prepare_batch(images: list[np.ndarray], min_size: int, max_size: int, size_divisibility: int = 32,
                  pad: tuple[int, int, int] = (0, 0, 0), resize: str = "opencv") -> tuple[np.ndarray, list[ImageMeta]]:
    """RGB uint8 images -> (network input uint8 [B, Hp, Wp, 3] padded bottom/right with the colour
    `pad`, metas). `resize`: the resize mode (see resize_image)."""
    resized, metas = [], []
    for img in images:
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 [H, W, 3] image, got {img.dtype} {tuple(img.shape)}")
        r = resize_image(img, min_size, max_size, resize)
        resized.append(r)
        metas.append(ImageMeta(orig_hw=img.shape[:2], resized_hw=r.shape[:2]))
    hp = padded_size(max(r.shape[0] for r in resized), size_divisibility)
    wp = padded_size(max(r.shape[1] for r in resized), size_divisibility)
    batch = np.empty((len(resized), hp, wp, 3), dtype=np.uint8)
    batch[...] = np.asarray(pad, dtype=np.uint8)
    for i, r in enumerate(resized):
        batch[i, : r.shape[0], : r.shape[1]] = r
    return batch, metas


def prepare_for(cfg: ModelConfig, images: list[np.ndarray]) -> tuple[np.ndarray, list[ImageMeta]]:
    """prepare_batch with everything the model's config says: its test size, divisibility,
    padding colour and resize mode. What every inference path calls."""
    return prepare_batch(images, cfg.min_size_test, cfg.max_size_test, cfg.size_divisibility, pad=pad_value(cfg),
                         resize=cfg.resize)
