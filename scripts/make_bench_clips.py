"""Synthetic clips for the video benchmarks: each clip shows a few images (e.g. the shapes set's),
each held for some frames and panned slowly, as mp4v.

    python scripts/make_bench_clips.py OUT --images shapes/images --clips 8 --frames 24 --size 480x640
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np


def make_clips(out: Path, images: list[Path], clips: int, frames: int, height: int, width: int,
               hold: int = 6, fps: float = 25.0) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    k = 0
    for c in range(clips):
        path = out / f"clip{c:02d}.mp4"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        if not writer.isOpened():
            raise OSError(f"cannot write {path}")
        for i in range(frames):
            if i % hold == 0:
                image = cv2.resize(cv2.imread(str(images[k % len(images)])), (width + 32, height + 32))
                k += 1
            shift = 4 * (i % hold)
            writer.write(np.ascontiguousarray(image[shift // 2: shift // 2 + height, shift: shift + width]))
        writer.release()
        paths.append(path)
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--images", required=True, help="folder of images (PNG/JPEG)")
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--size", default="480x640", help="HxW")
    args = p.parse_args()
    h, w = (int(v) for v in args.size.lower().split("x"))
    images = sorted(q for q in Path(args.images).iterdir() if q.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not images:
        raise SystemExit(f"no images in {args.images}")
    paths = make_clips(Path(args.out), images, args.clips, args.frames, h, w)
    print(f"wrote {len(paths)} clip(s) of {args.frames} frames ({h}x{w}) in {args.out}")


if __name__ == "__main__":
    main()
