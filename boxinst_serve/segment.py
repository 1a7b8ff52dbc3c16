"""`boxinst segment`: images or folders in, overlays and a COCO results json out. A file that
cannot be read is reported by name and the others are processed."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
from tqdm import tqdm

from boxinst_serve.engines import Engine
from boxinst_serve.files import write_json_atomic
from boxinst_serve.postprocess import to_instances
from boxinst_serve.preprocess import prepare_batch, read_image
from boxinst_serve.visualize import draw_instances

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def collect_images(inputs: list[str]) -> list[Path]:
    """Files as given, and the image files of folders (sorted)."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths.extend(sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES))
        else:
            paths.append(p)
    return paths


@dataclass
class SegmentReport:
    processed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    results_json: str = ""
    instances: int = 0


def segment_paths(engine: Engine, paths: list[Path], out_dir: str | os.PathLike, score_thresh: float = 0.3,
                  overlays: bool = True, progress: bool = True) -> SegmentReport:
    """Run the engine on each image; writes OUT/<name>.png overlays and OUT/results.json
    (COCO results with `file_name` per entry, and per-instance geometry)."""
    cfg = engine.config
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = SegmentReport()
    results = []
    for image_id, path in enumerate(tqdm(paths, desc="segment", disable=not progress, unit="img")):
        try:
            image = read_image(path)
        except (OSError, ValueError) as e:
            log.error("%s", e)
            report.failed.append((str(path), str(e)))
            continue
        batch, metas = prepare_batch([image], cfg.min_size_test, cfg.max_size_test, cfg.size_divisibility)
        inst = to_instances(engine(batch), 0, metas[0], cfg.mask_out_stride, cfg.mask_threshold, cfg.class_names)
        for entry, geo in zip(inst.to_coco(image_id), inst.geometry()):
            entry.update(file_name=str(path), category_name=cfg.class_names[entry["category_id"]]
                         if entry["category_id"] < len(cfg.class_names) else str(entry["category_id"]),
                         geometry=geo)
            results.append(entry)
        report.processed += 1
        report.instances += int((inst.scores >= score_thresh).sum())
        if overlays:
            drawn = draw_instances(image, inst, score_thresh)
            cv2.imwrite(str(out / f"{path.stem}.png"), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
    report.results_json = str(out / "results.json")
    write_json_atomic(out / "results.json", results)
    return report
