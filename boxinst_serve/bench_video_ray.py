"""Batch video on Ray against the single process (`boxinst bench --video SOURCES --checkpoint M
--ray-workers 1,2`): the same clips through `boxinst video` in this process and through `--ray`
with each number of workers on a local Ray started here, in one run. Wall time is counted from the
first video's start to the last one's end ("once started"); Ray's start-up (ray.init) and the
workers' start-up (process, imports, engine load) are shown apart, as is the single process's
engine load. Each Ray run's instances.jsonl and done.json are compared byte for byte with the
single-process ones.

Threads: the single process runs ONNX Runtime with its default (one per core); a Ray worker gets
cpus/workers CPUs and as many ONNX Runtime threads, so the runs use the same cores."""
from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Sequence

from boxinst_serve.video import DONE, JSONL, engine_batch_predictor, process_videos
from boxinst_serve.video_inputs import plan_videos


def _same_outputs(a: Path, b: Path, names: list[str]) -> bool:
    return all((a / n / f).read_bytes() == (b / n / f).read_bytes() for n in names for f in (JSONL, DONE))


def measure_video_ray(sources: str | Sequence[str], model: str, workers: Sequence[int] = (1, 2),
                      batch_size: int = 8, cpus: int | None = None) -> dict:
    """frames/s and wall time of the single process and of Ray with each worker count, one run."""
    import ray

    from boxinst_serve.engines import load_engine
    from boxinst_serve.video_ray import PredictorSpec, RayConfig, run_videos_on_ray

    cpus = cpus or os.cpu_count() or 1
    model = os.path.abspath(model)
    rows = []
    with tempfile.TemporaryDirectory(prefix="boxinst-bench-ray-") as tmp:
        names = [Path(t.out_dir).name for t in plan_videos(sources, tmp)]
        t0 = time.perf_counter()
        engine = load_engine(model)
        load_s = time.perf_counter() - t0
        single = process_videos(sources, Path(tmp) / "single", engine_batch_predictor(engine), batch_size=batch_size,
                                progress=False)
        if single.failed:
            raise RuntimeError(f"single process: {single.failed[0].error}")
        base = single.processing_s
        rows.append({"path": "boxinst video", "workers": 0, "startup_s": load_s, "wall_s": base,
                     "frames": single.frames_processed, "frames_per_s": single.frames_processed / base,
                     "wall_vs_single": 1.0, "identical": True})
        del engine
        t0 = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING)
        ray_init_s = time.perf_counter() - t0
        try:
            for n in workers:
                out = Path(tmp) / f"ray{n}"
                spec = PredictorSpec(model=model, threads=max(1, cpus // n))
                summary = run_videos_on_ray(sources, out, spec, RayConfig(workers=n, cpus_per_worker=cpus / n),
                                            batch_size=batch_size, progress=False)
                if summary.failed:
                    raise RuntimeError(f"--ray --workers {n}: {summary.failed[0].error}")
                wall = summary.processing_s
                rows.append({"path": "boxinst video --ray", "workers": n,
                             "startup_s": summary.startup["workers_start_s"], "wall_s": wall,
                             "frames": summary.frames_processed, "frames_per_s": summary.frames_processed / wall,
                             "wall_vs_single": wall / base, "identical": _same_outputs(out, Path(tmp) / "single", names)})
        finally:
            ray.shutdown()
    return {"videos": len(names), "cpus": cpus, "batch_size": batch_size, "ray_init_s": ray_init_s, "rows": rows}


def format_video_ray(result: dict) -> str:
    lines = [f"{result['videos']} video(s), batch {result['batch_size']}, Ray on {result['cpus']} CPU(s); "
             f"ray.init (local, started once): {result['ray_init_s']:.1f} s",
             "| path | workers | start-up s | wall s (once started) | frames | frames/s | wall vs single | "
             "outputs identical |", "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['path']} | {r['workers'] or '-'} | {r['startup_s']:.1f} | {r['wall_s']:.1f} | "
                     f"{r['frames']} | {r['frames_per_s']:.2f} | {r['wall_vs_single']:.2f}x | "
                     f"{'yes' if r['identical'] else 'NO'} |")
    return "\n".join(lines)
