"""`boxinst segment`: images or folders in, overlays and a COCO results json out, with an
in-process engine or through a server (`--url`). A file that cannot be read (or that the server
refuses) is reported by name and the others are processed."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

import cv2
from tqdm import tqdm

from boxinst_serve.engines import Engine
from boxinst_serve.files import write_json_atomic
from boxinst_serve.predictor import Predictor
from boxinst_serve.preprocess import read_image
from boxinst_serve.results import Instances
from boxinst_serve.visualize import draw_instances

# path -> (RGB uint8 [H, W, 3] for the overlay, its Instances)
PathPredictor = Callable[[Path], "tuple[np.ndarray, Instances]"]

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
    seconds: float = 0.0  # time spent predicting (reading included, overlays and writing excluded)

    @property
    def images_per_s(self) -> float:
        return self.processed / self.seconds if self.seconds else 0.0


def engine_predictor(engine: Engine) -> PathPredictor:
    """Read the file, then the Predictor (prepare, the engine, paste masks): all in this process."""
    predictor = Predictor(engine)

    def predict(path: Path):
        image = read_image(path)
        return image, predictor(image)

    return predict


def client_predictor(client, deadline_ms: float | None = None) -> PathPredictor:
    """Send the file's bytes to a server (boxinst_serve.client.BoxInstClient), each with
    `deadline_ms` (None: the client's timeout only); decode locally only for the overlay."""
    from boxinst_serve.client import BoxInstError

    def predict(path: Path):
        if not path.is_file():
            raise FileNotFoundError(f"image '{path}' does not exist")
        data = path.read_bytes()
        try:
            inst = client.segment(data, deadline_ms=deadline_ms)
        except BoxInstError as e:
            raise ValueError(f"{path}: {e}") from e
        return read_image(path), inst

    return predict


def segment_paths(predict: Engine | PathPredictor, paths: list[Path], out_dir: str | os.PathLike,
                  score_thresh: float = 0.3, overlays: bool = True, progress: bool = True) -> SegmentReport:
    """Segment each image with an engine or a predictor; writes OUT/<name>.png overlays and
    OUT/results.json (COCO results with `file_name` per entry, and per-instance geometry)."""
    if hasattr(predict, "config"):
        predict = engine_predictor(predict)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = SegmentReport()
    results = []
    for image_id, path in enumerate(tqdm(paths, desc="segment", disable=not progress, unit="img")):
        t0 = time.perf_counter()
        try:
            image, inst = predict(Path(path))
        except (OSError, ValueError) as e:
            log.error("%s", e)
            report.failed.append((str(path), str(e)))
            continue
        report.seconds += time.perf_counter() - t0
        for i, (entry, geo) in enumerate(zip(inst.to_coco(image_id), inst.geometry())):
            entry.update(file_name=str(path), category_name=inst.class_name(i), geometry=geo)
            results.append(entry)
        report.processed += 1
        report.instances += int((inst.scores >= score_thresh).sum())
        if overlays:
            drawn = draw_instances(image, inst, score_thresh)
            cv2.imwrite(str(out / f"{path.stem}.png"), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
    report.results_json = str(out / "results.json")
    write_json_atomic(out / "results.json", results)
    return report
