"""Batch video on Ray against the single process (`boxinst bench --video SOURCES --checkpoint M
--ray-workers 1,2`): the same clips through `boxinst video` in this process and through `--ray`
with each number of workers on a local Ray started here, in one run. Wall time is counted from the
first video's start to the last one's end ("once started"); Ray's start-up (ray.init) and the
workers' start-up (process, imports, engine load) are shown apart, as is the single process's
engine load. Each Ray run's instances.jsonl and done.json are compared byte for byte with the
single-process ones.

The paths take turns (single, Ray with each worker count) `repeats` times over; each figure is
the median of its path's runs, so a burst of load from elsewhere on a shared machine moves one run,
not the ratio.

Priority: Ray starts its worker processes at nice 15 (its `worker_niceness`), which on a machine
shared with other work would hand the CPUs to everything else; the local Ray started here sets it
to 0, the single process's priority. (A Ray this process already runs is used as it is.)

Threads: the single process runs ONNX Runtime with its default (one per core); a Ray worker gets
cpus/workers CPUs and as many ONNX Runtime threads, so the runs use the same cores."""
from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Sequence

from boxinst_serve.apps.video.pipeline import DONE, JSONL, engine_batch_predictor, process_videos
from boxinst_serve.apps.video.inputs import plan_videos


def _same_outputs(a: Path, b: Path, names: list[str]) -> bool:
    return all((a / n / f).read_bytes() == (b / n / f).read_bytes() for n in names for f in (JSONL, DONE))


def measure_video_ray(sources: str | Sequence[str], model: str, workers: Sequence[int] = (1, 2),
                      batch_size: int = 8, cpus: int | None = None, repeats: int = 3) -> dict:
    """frames/s and wall time (medians of `repeats` turns) of the single process and of Ray with
    each worker count, one run."""
    import ray

    from boxinst_serve.engines import load_engine
    from boxinst_serve.apps.video.ray import PredictorSpec, RayConfig, run_videos_on_ray

    model = os.path.abspath(model)
    runs: dict[int, list[dict]] = {0: [], **{n: [] for n in workers}}  # 0: the single process
    with tempfile.TemporaryDirectory(prefix="boxinst-bench-ray-") as tmp:
        names = [Path(t.out_dir).name for t in plan_videos(sources, tmp)]
        t0 = time.perf_counter()
        engine = load_engine(model)
        load_s = time.perf_counter() - t0
        predict = engine_batch_predictor(engine)
        t0 = time.perf_counter()
        started = not ray.is_initialized()  # a Ray this process already runs (the tests') is used as it is
        if started:
            cpus = cpus or os.cpu_count() or 1
            ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING,
                     _system_config={"worker_niceness": 0})
        else:
            cpus = cpus or int(ray.cluster_resources().get("CPU", 1))
        ray_init_s = time.perf_counter() - t0
        try:
            for r in range(repeats):
                ref = Path(tmp) / f"single{r}"
                single = process_videos(sources, ref, predict, batch_size=batch_size, progress=False)
                if single.failed:
                    raise RuntimeError(f"single process: {single.failed[0].error}")
                runs[0].append({"startup_s": load_s, "wall_s": single.processing_s,
                                "frames": single.frames_processed, "identical": None})  # the reference
                for n in workers:
                    out = Path(tmp) / f"ray{n}-{r}"
                    spec = PredictorSpec(model=model, threads=max(1, cpus // n))
                    summary = run_videos_on_ray(sources, out, spec, RayConfig(workers=n, cpus_per_worker=cpus / n),
                                                batch_size=batch_size, progress=False)
                    if summary.failed:
                        raise RuntimeError(f"--ray --workers {n}: {summary.failed[0].error}")
                    runs[n].append({"startup_s": summary.startup["workers_start_s"], "wall_s": summary.processing_s,
                                    "frames": summary.frames_processed, "identical": _same_outputs(out, ref, names)})
        finally:
            if started:
                ray.shutdown()
    rows = []
    base = statistics.median(run["wall_s"] for run in runs[0])
    for n, rs in runs.items():
        wall = statistics.median(run["wall_s"] for run in rs)
        frames = rs[0]["frames"]
        rows.append({"path": "boxinst video --ray" if n else "boxinst video", "workers": n,
                     "startup_s": statistics.median(run["startup_s"] for run in rs), "wall_s": wall,
                     "wall_s_runs": [run["wall_s"] for run in rs], "frames": frames, "frames_per_s": frames / wall,
                     "wall_vs_single": wall / base,
                     "identical": None if n == 0 else all(run["identical"] for run in rs)})
    return {"videos": len(names), "cpus": cpus, "batch_size": batch_size, "repeats": repeats,
            "ray_init_s": ray_init_s, "rows": rows}


def format_video_ray(result: dict) -> str:
    lines = [f"{result['videos']} video(s), batch {result['batch_size']}, Ray on {result['cpus']} CPU(s), "
             f"medians of {result['repeats']} turn(s); ray.init (local, started once): {result['ray_init_s']:.1f} s",
             "| path | workers | start-up s | wall s (once started) | runs s | frames | frames/s | wall vs single | "
             "outputs identical |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        each = ", ".join(f"{w:.1f}" for w in r["wall_s_runs"])
        lines.append(f"| {r['path']} | {r['workers'] or '-'} | {r['startup_s']:.1f} | {r['wall_s']:.1f} | {each} | "
                     f"{r['frames']} | {r['frames_per_s']:.2f} | {r['wall_vs_single']:.2f}x | "
                     f"{'(reference)' if r['identical'] is None else 'yes' if r['identical'] else 'NO'} |")
    return "\n".join(lines)
