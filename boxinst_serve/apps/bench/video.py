"""Video throughput (`boxinst bench --video CLIP --model M`): frames/s of the pipelined, batched
`boxinst video` path at several batch sizes against a plain one-frame-at-a-time loop (decode,
infer, write the JSON line, in sequence) over the same clip, in one run."""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import cv2

from boxinst_serve.engines import Engine
from boxinst_serve.predictor import Predictor
from boxinst_serve.apps.video.pipeline import engine_batch_predictor, frame_record, process_video


def plain_loop(clip: str | Path, engine: Engine, out_path: Path) -> tuple[int, float]:
    """The baseline: read a frame, run it, write its line; nothing overlaps. -> (frames, seconds)."""
    predictor = Predictor(engine)
    cap = cv2.VideoCapture(str(clip))
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    frames = 0
    t0 = time.perf_counter()
    with open(out_path, "w") as f:
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            inst = predictor(rgb)
            f.write(json.dumps(frame_record(frames, frames / fps, inst)) + "\n")
            frames += 1
    cap.release()
    return frames, time.perf_counter() - t0


def measure_video(clip: str | Path, engine: Engine, batch_sizes=(1, 4, 8)) -> dict:
    """frames/s of the plain loop and of process_video at each batch size, same clip, one run."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="boxinst-bench-video-") as tmp:
        n, secs = plain_loop(clip, engine, Path(tmp) / "plain.jsonl")
        base = n / secs
        rows.append({"path": "plain loop", "batch": 1, "frames": n, "seconds": secs, "frames_per_s": base,
                     "speedup": 1.0})
        predict = engine_batch_predictor(engine)
        for b in batch_sizes:
            t0 = time.perf_counter()
            report = process_video(str(clip), Path(tmp) / f"b{b}", predict, batch_size=b, progress=False)
            secs = time.perf_counter() - t0
            if report.error:
                raise RuntimeError(report.error)
            fps = report.frames_processed / secs
            rows.append({"path": "boxinst video", "batch": b, "frames": report.frames_processed, "seconds": secs,
                         "frames_per_s": fps, "speedup": fps / base})
    return {"clip": str(clip), "rows": rows}


def format_video(result: dict) -> str:
    lines = [f"clip: {result['clip']}", "| path | batch | frames | s | frames/s | vs plain loop |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['path']} | {r['batch']} | {r['frames']} | {r['seconds']:.1f} | {r['frames_per_s']:.2f} | "
                     f"{r['speedup']:.2f} |")
    return "\n".join(lines)
