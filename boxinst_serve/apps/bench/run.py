"""What `boxinst bench` runs, one function per mode: engines in process on one image
(`bench_engines`), a running server under load (`bench_server`), camera frames through a server by
input path (`bench_frames`), video throughput (`bench_video`) and video on Ray (`bench_video_ray`).

Each returns a BenchOutput: the result as a dict, its table and the header line's text, which
boxinst_serve.measure.print_result prints as one JSON line or as "machine: ...; header" + table.
The command line (boxinst_serve.cli.bench) only parses flags and prints."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

DEFAULT_SIZE = (512, 512)  # the random image's HxW where no --size is given
ENGINES = ("torch", "onnxruntime", "onnxruntime-int8", "openvino", "tensorrt")
DEFAULT_ENGINES = ("torch", "onnxruntime")  # for a checkpoint: the same weights on both
MODEL_SUFFIXES = {".pt": "checkpoint", ".pth": "checkpoint", ".onnx": "onnx", ".xml": "openvino", ".plan": "plan",
                  ".engine": "plan"}


@dataclass
class BenchOutput:
    result: dict[str, Any]  # the JSON output ("machine" is added when printed)
    table: str  # the text output below the "machine: ..." line
    header: str = ""  # the rest of that line


def model_kind(path: str | Path) -> str:
    """'checkpoint' (.pt), 'onnx' (.onnx), 'openvino' (.xml IR) or 'plan' (.plan) for --checkpoint;
    ValueError naming what it takes otherwise."""
    kind = MODEL_SUFFIXES.get(Path(path).suffix.lower())
    if kind is None:
        raise ValueError(f"--checkpoint takes a checkpoint (.pt), an ONNX model (.onnx), an OpenVINO IR (.xml) or a "
                         f"TensorRT plan (.plan), got '{path}'")
    return kind


# ---- engines in process ------------------------------------------------------------------------

def bench_engines(checkpoint: str | Path | None = None, engines: Sequence[str] | None = None, *,
                  config: str = "lite", size: tuple[int, int] | None = None, image: str | Path | None = None,
                  precision: str = "fp32", device: str = "cpu", batch: int = 1, iters: int = 20, warmup: int = 3,
                  threads: int = 0, stages: bool = True, score_thresh: float | None = None,
                  calibration: str | None = None, calibration_images: int = 64) -> BenchOutput:
    """End-to-end latency of engines on the same weights and image, with the network's FLOPs and
    the compute efficiency against the machine's dense throughput measured in the same run.

    checkpoint: a .pt checkpoint (default: a freshly initialised preset `config`: speed does not
    depend on the weights), whose weights every engine of `engines` (default torch, onnxruntime)
    runs; or an exported model, .onnx (on onnxruntime, or openvino), .xml or .plan, benchmarked alone (no
    torch weights to compare).
    size: the test size HxW (a checkpoint's own when None) and the random image's size (512x512
    when None); image: an image file instead of random pixels. score_thresh: overrides the config's."""
    import torch

    if precision == "fp16" and not device.startswith("cuda"):
        raise ValueError("--precision fp16 needs --device cuda (CPUs run fp32)")
    kind = model_kind(checkpoint) if checkpoint is not None else "checkpoint"
    if kind != "checkpoint":
        engines = _exported_engine_names(checkpoint, kind, engines, size, score_thresh, precision)
    engines = list(engines or DEFAULT_ENGINES)
    unknown = [n for n in engines if n not in ENGINES]
    if unknown:
        raise ValueError(f"unknown engine {unknown[0]!r}: use {', '.join(ENGINES)}")
    if threads:
        torch.set_num_threads(threads)
    h, w = size or DEFAULT_SIZE
    if image:
        from boxinst_serve.preprocess import read_image

        pixels = read_image(image)
    else:
        pixels = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory(prefix="boxinst-bench-") as tmp:  # exports and resized weights
        if kind == "checkpoint":
            models = _CheckpointModels(_bench_checkpoint(Path(tmp), checkpoint, config, size, score_thresh), Path(tmp))
        else:
            models = _ExportedModel(checkpoint)
        reports = []
        for name in engines:
            engine = models.engine(name, pixels, device=device, precision=precision, threads=threads,
                                   batch=batch, calibration=calibration, calibration_images=calibration_images)
            reports.append(_measure(engine, name, pixels, batch, iters, warmup, device, stages))
    flops, dense = _flops_and_dense(engine.config, reports[0].input_hw, batch, device, precision)
    for r in reports:
        r.gflops = flops / 1e9
        r.efficiency = (flops / (r.p50_ms / 1000.0)) / dense
    return _engines_output(reports, flops, dense, device, precision, batch)


def _exported_engine_names(path, kind: str, engines: Sequence[str] | None, size, score_thresh,
                           precision: str) -> list[str]:
    """The one engine an exported model runs on (an .onnx: ONNX Runtime, or OpenVINO where `engines` is
    just openvino), after refusing what only a checkpoint allows."""
    name = {"plan": "tensorrt", "openvino": "openvino"}.get(kind, "onnxruntime")
    if kind == "onnx":
        from export.quantize import quantization_info

        if quantization_info(path):
            name = "onnxruntime-int8"
        elif engines and list(engines) == ["openvino"]:
            name = "openvino"
    if kind in ("onnx", "openvino") and precision == "fp16":
        raise ValueError(f"'{path}' runs as exported (fp32): --precision fp16 applies to a checkpoint benchmarked "
                         "with torch or tensorrt")
    what = {"onnx": "an ONNX model", "openvino": "an OpenVINO IR", "plan": "a TensorRT plan"}[kind]
    if engines and list(engines) != [name]:
        raise ValueError(f"--checkpoint '{path}' is {what}: it runs on {name} alone (leave --engines out"
                         + ("; or --engines openvino" if kind == "onnx" and name == "onnxruntime" else "")
                         + "); compare engines on the same weights with a .pt checkpoint")
    for flag, value in (("--size", size), ("--score-thresh", score_thresh)):
        if value is not None:
            raise ValueError(f"{flag} changes the model's config, which the export of '{path}' fixed: leave it out "
                             "or give the .pt checkpoint")
    return [name]


def _bench_checkpoint(work: Path, checkpoint, config: str, size, score_thresh) -> Path:
    """The .pt checkpoint the engines run: a fresh preset, or `checkpoint` with the test size and score
    threshold overridden where given (written to `work`), else `checkpoint` itself."""
    from boxinst_serve.checkpoint import load_checkpoint, save_atomic

    overrides = {} if score_thresh is None else {"score_thresh": score_thresh}
    if size is not None:
        overrides.update(min_size_test=min(size), max_size_test=max(size))
    if checkpoint is None:
        import torch

        from boxinst_serve.config import preset
        from boxinst_serve.model import build_model

        h, w = size or DEFAULT_SIZE
        cfg = preset(config).replace(**{"min_size_test": min(h, w), "max_size_test": max(h, w), **overrides})
        torch.manual_seed(0)
        path = work / f"{cfg.name}.pt"
        save_atomic({"model": build_model(cfg).state_dict(), "model_config": cfg.to_dict()}, path)
        return path
    if not overrides:
        return Path(checkpoint)
    ckpt = load_checkpoint(checkpoint)
    path = work / "resized.pt"
    save_atomic({"model": ckpt["model"], "model_config": ckpt["model_config"].replace(**overrides).to_dict()}, path)
    return path


class _CheckpointModels:
    """Each engine of one checkpoint, the ONNX export made once for onnxruntime, onnxruntime-int8 and openvino
    (which runs the .onnx file as it is, as `boxinst export --format openvino` converts it)."""

    def __init__(self, checkpoint: Path, work: Path):
        self.checkpoint, self.work = checkpoint, work
        self._onnx: Path | None = None

    def onnx(self) -> Path:
        if self._onnx is None:
            from export.onnx import export_onnx

            self._onnx = export_onnx(self.checkpoint, self.work / "onnx")
        return self._onnx

    def engine(self, name: str, image: np.ndarray, device: str, precision: str, threads: int, batch: int,
               calibration: str | None, calibration_images: int):
        from boxinst_serve.engines import load_engine

        if name == "torch":
            engine = load_engine(self.checkpoint, device=device)
            if precision == "fp16":
                engine.net.half()
            return engine
        if name == "tensorrt":
            return load_engine(self._tensorrt_plan(image, batch, precision))
        if precision == "fp16":
            raise ValueError(f"the {name} engine runs the fp32 graph: use torch or tensorrt for fp16"
                             if name in ("onnxruntime", "openvino") else
                             "onnxruntime-int8 runs the INT8 graph: --precision applies to torch/tensorrt")
        if name in ("onnxruntime", "openvino"):
            return load_engine(self.onnx(), device=device, engine=name, threads=threads)
        return load_engine(self._int8(image, calibration, calibration_images), device=device, threads=threads)

    def _int8(self, image: np.ndarray, calibration: str | None, calibration_images: int) -> Path:
        from export.quantize import Int8Options, quantize_exported, quantize_onnx

        int8_path = self.work / "onnx" / "model_int8.onnx"
        if calibration:
            quantize_exported(self.onnx(), Int8Options(calibration, calibration_images), int8_path)
        else:  # speed does not depend on the ranges: min-max ranges of the benchmark image itself
            from boxinst_serve.preprocess import prepare_for

            batch, _ = prepare_for(engine_config(self.onnx()), [image])
            quantize_onnx(self.onnx(), [batch], int8_path, method="minmax",
                          calibration_info={"data": "the benchmark image"})
        return int8_path

    def _tensorrt_plan(self, image: np.ndarray, batch: int, precision: str) -> Path:
        """A plan for one input shape, the benchmark's: the image resized and padded as prepare_for does."""
        from export.tensorrt import build_engine

        from boxinst_serve.config import network_input_hw

        hw = network_input_hw(engine_config(self.onnx()), *image.shape[:2])
        return build_engine(self.onnx(), (1, *hw), (batch, *hw), (batch, *hw), fp16=precision == "fp16")


class _ExportedModel:
    """An .onnx, .xml or .plan file: the one engine it runs on."""

    def __init__(self, path):
        self.path = path

    def engine(self, name: str, image: np.ndarray, device: str, precision: str, threads: int, batch: int,
               calibration: str | None, calibration_images: int):
        from boxinst_serve.engines import load_engine

        if name == "tensorrt":
            return load_engine(self.path)
        return load_engine(self.path, device=device, engine="openvino" if name == "openvino" else None, threads=threads)


def engine_config(onnx_path: Path):
    """The ModelConfig in an exported ONNX file's metadata."""
    from export.onnx import read_metadata

    from boxinst_serve.config import ModelConfig

    return ModelConfig.from_json(read_metadata(onnx_path)["model_config"])


def _measure(engine, name: str, image: np.ndarray, batch: int, iters: int, warmup: int, device: str, stages: bool):
    from boxinst_serve.apps.bench.engines import measure, staged_latency

    report = measure(engine, name, image, batch=batch, iters=iters, warmup=warmup)
    if name == "torch" and stages:
        report.stages_ms = staged_latency(engine.net.model, image, batch=batch, iters=max(3, iters // 2), warmup=1,
                                          device=device)
    return report


def _flops_and_dense(cfg, input_hw: tuple[int, int], batch: int, device: str, precision: str) -> tuple[int, float]:
    """FLOPs of the network at the measured input size (weights do not matter: a fresh model of the
    config), and the machine's dense throughput now, in the same run."""
    import torch

    from boxinst_serve.apps.bench.engines import dense_flops_per_s, network_flops
    from boxinst_serve.model import build_model

    torch.manual_seed(0)
    hp, wp = input_hw
    flops = network_flops(build_model(cfg), torch.zeros(batch, hp, wp, 3, dtype=torch.uint8))
    dense = dense_flops_per_s(device, torch.float16 if precision == "fp16" else torch.float32)
    return flops, dense


def _engines_output(reports: list, flops: int, dense: float, device: str, precision: str,
                    batch: int) -> BenchOutput:
    import torch

    from boxinst_serve.apps.bench.engines import PAPER_LINE, format_reports

    result = {"device": device, "precision": precision, "torch_threads": torch.get_num_threads(),
              "dense_gflops_per_s": dense / 1e9, "paper": PAPER_LINE, "reports": [r.to_dict() for r in reports]}
    lines = [f"dense {'fp16' if precision == 'fp16' else 'fp32'} matrix product, measured now: "
             f"{dense / 1e9:.1f} GFLOP/s; network: {flops / 1e9:.1f} GFLOPs per batch of {batch}",
             format_reports(reports)]
    if len(reports) == 2:
        lines.append(f"{reports[1].engine} / {reports[0].engine} p50 latency: "
                     f"{reports[1].p50_ms / reports[0].p50_ms:.2f}")
    lines.append(PAPER_LINE)
    header = f"device {device}, {precision}; torch threads {result['torch_threads']}"
    return BenchOutput(result, "\n".join(lines), header)


# ---- a running server --------------------------------------------------------------------------

def bench_soak(url: str, seconds: float, concurrency: int = 4, image: str | Path | None = None,
               size: tuple[int, int] | None = None, client_kwargs: dict | None = None) -> BenchOutput:
    """`--soak SECONDS`: mixed valid and invalid requests from `concurrency` clients, the server's
    memory over time (boxinst_serve.apps.bench.soak)."""
    import cv2

    from boxinst_serve.apps.bench.soak import format_soak, run_soak

    if image:
        from boxinst_serve.preprocess import read_image

        rgb = read_image(image)
    else:
        h, w = size or DEFAULT_SIZE
        rgb = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    data = cv2.imencode(".png", rgb)[1].tobytes()
    report = run_soak(url, data, rgb, seconds, concurrency=concurrency, client_kwargs=client_kwargs)
    return BenchOutput({"url": url, "soak": report.to_dict()}, format_soak(report), f"server {url}")


def bench_server(url: str, repository: str | Path | None = None, image: str | Path | None = None,
                 size: tuple[int, int] | None = None, concurrency: Sequence[int] = (1, 2, 4, 8),
                 duration_s: float = 10.0, iters: int = 30, threads: int = 0,
                 client_kwargs: dict | None = None) -> BenchOutput:
    """Load on a running server per concurrency; given the served `repository` (on this machine),
    against the in-process latency of the same work (ONNX Runtime as served). The request: the PNG
    `image`, else random pixels of `size` (512x512). client_kwargs: BoxInstClient's TLS and key
    keywords for a secured server."""
    from boxinst_serve.apps.bench.server import format_load, measure_in_process, measure_load, served_queue
    from boxinst_serve.serving import model_parameters, onnxruntime_settings
    from boxinst_serve.client import BoxInstClient

    if image:
        data = Path(image).read_bytes()
    else:
        import cv2

        h, w = size or DEFAULT_SIZE
        rgb = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
        data = cv2.imencode(".png", rgb)[1].tobytes()
    kw = client_kwargs or {}
    with BoxInstClient(url, timeout_s=60, **kw) as c:
        if not c.is_ready():
            raise RuntimeError(f"no ready boxinst model at {url} (start it with `boxinst serve`)")
        c.segment(data)
        net_config = c.net_config  # what the server says of its network: no local repository needed
    queue = served_queue(net_config)
    in_process = None
    if repository is not None:
        # the in-process baseline runs ONNX Runtime as served
        settings = onnxruntime_settings(model_parameters(net_config["config"]))
        in_process = measure_in_process(repository, data, iters=iters, threads=threads or settings["threads"],
                                        spinning=settings["spinning"])
    reports = [measure_load(url, data, k, duration_s, client_kwargs=kw) for k in concurrency]
    header = (f"server {url} (boxinst_net: {queue['instances']} instance(s), max_queue_size "
              f"{queue['max_queue_size'] or 'unbounded'}, queue deadline {queue['timeout_ms'] or 'none'} ms); "
              + (f"repository {repository}" if repository is not None else "no --repository: no in-process baseline"))
    return BenchOutput({"url": url, "server_queue": queue, "in_process": in_process,
                        "load": [r.to_dict() for r in reports]}, format_load(reports, in_process), header)


def bench_frames(url: str, repository: str | Path, inputs: str, frames: Sequence[tuple[int, int]],
                 image: str | Path | None = None, iters: int = 30, warmup: int = 3, threads: int = 0,
                 raw_model: str | None = None, client_kwargs: dict | None = None) -> BenchOutput:
    """Camera frames through a running server by input path (inputs: comma-separated png, raw,
    shm): latency and where it goes, against the in-process latency of the same work in the same
    run (boxinst_serve.apps.bench.frames). frames: (h, w) sizes; `image` resized to each, else
    random pixels. client_kwargs: BoxInstClient's TLS and key keywords for a secured server."""
    from boxinst_serve.apps.bench.frames import (INPUTS, format_budget, frame_of, in_process_runner, measure_budget,
                                                 served_engine_settings)

    modes = [m for m in inputs.split(",") if m]
    bad = [m for m in modes if m not in INPUTS]
    if bad or not modes:
        raise ValueError(f"--input takes one or more of {', '.join(INPUTS)} (comma-separated), got {inputs!r}")
    settings = served_engine_settings(url, client_kwargs)  # the in-process run uses the served engine's settings
    in_process = in_process_runner(repository, threads=threads or settings["threads"], spinning=settings["spinning"])
    rows = []
    for hw in frames:
        frame = frame_of(hw, image)
        for mode in modes:
            rows.append(measure_budget(url, frame, mode, in_process, iters=iters, warmup=warmup, raw_model=raw_model,
                                       client_kwargs=client_kwargs))
    header = (f"server {url}; repository {repository}; {iters} requests per row at concurrency 1, alternating with "
              f"in-process runs (ONNX Runtime threads {threads or settings['threads'] or 'default'}, "
              f"spinning {'on' if settings['spinning'] else 'off'}, as served)")
    return BenchOutput({"url": url, "engine": settings, "rows": [r.to_dict() for r in rows]},
                       format_budget(rows), header)


# ---- video -------------------------------------------------------------------------------------

def bench_video(clip: str | Path, model: str | Path, batch_sizes: Sequence[int] = (1, 4, 8),
                device: str = "cpu") -> BenchOutput:
    """Video throughput on `clip`: a plain one-frame loop against `boxinst video` at batch_sizes;
    model: .pt, .onnx or .plan."""
    from boxinst_serve.apps.bench.video import format_video, measure_video
    from boxinst_serve.engines import load_engine

    model_kind(model)
    result = measure_video(clip, load_engine(model, device=device), batch_sizes=batch_sizes)
    return BenchOutput(result, format_video(result))


def bench_video_ray(sources: str | Sequence[str], model: str | Path, workers: Sequence[int] = (1, 2),
                    batch_size: int = 1, repeats: int = 3) -> BenchOutput:
    """Single-process `boxinst video` against `--ray` with these worker counts on a local Ray."""
    from boxinst_serve.apps.bench.video_ray import format_video_ray, measure_video_ray

    model_kind(model)
    result = measure_video_ray(sources, str(model), workers=workers, batch_size=batch_size, repeats=repeats)
    return BenchOutput(result, format_video_ray(result))


# ---- a preset's size (`boxinst info`) ----------------------------------------------------------

def model_info(config: str, size: tuple[int, int] = (800, 1344), num_classes: int = 80) -> dict[str, Any]:
    """Parameters and GFLOPs (torch's flop counter, 1 multiply-add = 2 FLOPs) of the preset `config`'s
    network without post-processing on one uint8 image of `size` HxW (multiples of 32)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from boxinst_serve.config import preset
    from boxinst_serve.model import build_model

    cfg = preset(config, num_classes=num_classes)
    model = build_model(cfg).eval()
    params = sum(p.numel() for p in model.parameters())
    h, w = size
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, h, w, 3, dtype=torch.uint8))
    return {"config": cfg.name, "parameters": params, "input": [h, w], "gflops": counter.get_total_flops() / 1e9,
            "controller_params": cfg.num_controller_params}


def format_model_info(info: dict[str, Any]) -> str:
    h, w = info["input"]
    return (f"{info['config']}: {info['parameters'] / 1e6:.2f} M parameters, {info['gflops']:.1f} GFLOPs at {h}x{w} "
            f"(network without post-processing; 1 multiply-add = 2 FLOPs), "
            f"controller outputs {info['controller_params']} parameters per instance")
