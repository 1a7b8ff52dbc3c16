"""The argparse types the verbs share: sizes, ranges, integer lists, camera frame sizes. Each raises
argparse.ArgumentTypeError, which argparse prints as the usage error."""
from __future__ import annotations

import argparse

from boxinst_serve.config import parse_size  # noqa: F401 (a type of these verbs too: '512', '800x1333' as HxW)


def parse_range(text: str) -> tuple[int, int]:
    """'15' -> (15, 15); '1-6' -> (1, 6)."""
    try:
        lo, _, hi = text.partition("-")
        bounds = (int(lo), int(hi or lo))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or MIN-MAX, got {text!r}") from None
    if not 1 <= bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"expected 1 <= MIN <= MAX, got {text!r}")
    return bounds


def parse_ints(text: str) -> tuple[int, ...]:
    """'1,2,4' -> (1, 2, 4)."""
    try:
        return tuple(int(t) for t in text.split(",") if t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def parse_frame_sizes(text: str) -> tuple[tuple[int, int], ...]:
    """'640x480,1280x720' (WIDTHxHEIGHT, as cameras say it) -> ((480, 640), (720, 1280)) as (h, w)."""
    sizes = []
    for item in (t for t in text.split(",") if t):
        w, h = parse_size(item)
        sizes.append((h, w))
    return tuple(sizes)
