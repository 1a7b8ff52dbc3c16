"""Camera frame to instances through a running server: where the milliseconds go
(`boxinst bench --url URL --input png,raw,shm`).

For each frame size and input path, at concurrency 1, requests alternate with the in-process
run of the same work (boxinst_serve.serving.fused.FramePipeline: pre-processing, ONNX Runtime on the
repository's model.onnx with the served model's thread settings, paste + RLE: what a robot
holding the frame would do without a server), so that both see the same machine state. Raw and
shared-memory frames go where the client sends them: `boxinst_raw_fused` (one process) where
the server has it, else the `boxinst_raw` ensemble, or the model named by `raw_model`.
The client-side latency (frame in, Instances out) is split into:
- encode: PNG encoding (png), building the request message (raw) or copying the frame into
  shared memory (shm), measured by the client;
- transfer: the gRPC call minus the ensemble's time in Triton: serialisation, the wire, gRPC
  threads on both sides, setting up the request and sending the response;
- queue: time the request waited in the steps' schedulers (Triton's statistics);
- server compute: the served model's time minus that queueing: the steps' work, including
  moving tensors to and from the Python-backend stub processes and from step to step;
- decode: response to Instances, measured by the client.
The server-side figures come from Triton's statistics (the gRPC inference-statistics API), which
are cumulative sums: they are means over the timed requests (the difference of two snapshots),
the client-side parts medians. Triton closes a request's statistics when it releases the request,
a little after the response has left, so under heavy CPU contention `transfer` can come out
slightly negative."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from boxinst_serve.client import BoxInstClient
from boxinst_serve.measure import percentile_ms
from boxinst_serve.serving.fused import STAGES, FramePipeline
from boxinst_serve.serving import model_parameters, onnxruntime_settings

INPUTS = ("png", "raw", "shm")


@dataclass
class BudgetRow:
    input: str
    frame: str  # "WxH"
    model: str  # the served model the requests went to
    requests: int
    instances: int
    p50_ms: float
    p95_ms: float
    in_process_p50_ms: float
    in_process_p95_ms: float
    encode_ms: float
    transfer_ms: float
    queue_ms: float
    server_compute_ms: float
    decode_ms: float
    # per step: {"model", "server_ms": the step's mean time in Triton (queue + compute, its
    # statistics), "infer_ms": of which its execute() (Triton's compute_infer), "in_process_ms":
    # the mean time of the same stage in process}; a model that is not an ensemble is one step,
    # "all", against the whole in-process run
    steps: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.p50_ms / self.in_process_p50_ms

    def to_dict(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}


def _stats(client, models: list[str]) -> dict[str, dict[str, float]]:
    """model -> {count, success_ns, queue_ns, infer_ns} (cumulative, from Triton)."""
    out = {}
    for m in models:
        s = client.get_inference_statistics(m, as_json=True)["model_stats"][0]["inference_stats"]

        def ns(key: str) -> float:
            return float(s.get(key, {}).get("ns", 0))

        out[m] = {"count": float(s.get("success", {}).get("count", 0)), "success_ns": ns("success"),
                  "queue_ns": ns("queue"), "infer_ns": ns("compute_infer")}
    return out


def _steps(client, model: str) -> list[str]:
    """An ensemble's step models, in order; [] for a model that is not an ensemble."""
    cfg = client.get_model_config(model, as_json=True)["config"]
    return [s["model_name"] for s in cfg.get("ensemble_scheduling", {}).get("step", [])]


def served_engine_settings(url: str, client_kwargs: dict | None = None) -> dict:
    """The served boxinst_net's ONNX Runtime settings (config parameters written by export), so
    that the in-process run uses the same: {"threads": int, "spinning": bool}. client_kwargs:
    BoxInstClient's TLS and key keywords."""
    with BoxInstClient(url, timeout_s=30, **(client_kwargs or {})) as c:
        config = c.net_config["config"]
    return onnxruntime_settings(model_parameters(config))


def in_process_runner(repository: str | Path, threads: int = 0, spinning: bool = True):
    """frame RGB uint8 [H, W, 3] -> (Instances, seconds per stage {pre, network, post}), the
    server's work in this process (the code the one-process model runs in Triton)."""
    return FramePipeline.from_repository(repository, threads=threads, spinning=spinning).timed


def measure_budget(url: str, frame: np.ndarray, input_mode: str, in_process, iters: int = 30, warmup: int = 3,
                   timeout_s: float = 60.0, raw_model: str | None = None,
                   client_kwargs: dict | None = None) -> BudgetRow:
    """`iters` requests of `frame` by `input_mode`, alternating with as many in-process runs
    (in-process first on every other request). raw_model: where raw and shm frames go (None:
    the client's choice). client_kwargs: BoxInstClient's TLS and key keywords for a secured server
    (the statistics are read through the same client, so they carry them too)."""
    if input_mode not in INPUTS:
        raise ValueError(f"--input must be among {INPUTS}, got {input_mode!r}")
    kwargs = {"png": {"arrays": "png"}, "raw": {}, "shm": {"shared_memory": True}}[input_mode]
    with BoxInstClient(url, timeout_s=timeout_s, raw_model=raw_model, **kwargs, **(client_kwargs or {})) as client:
        stats_client = client._client  # its tritonclient: TLS and the API key plugin included
        served = client.model if input_mode == "png" else client.raw_model
        models = [served] + _steps(stats_client, served)
        for _ in range(warmup):
            client.segment(frame)
            in_process(frame)
        before = _stats(stats_client, models)
        lat, inproc, enc, call, dec = [], [], [], [], []
        stages = {k: [] for k in STAGES}
        dets = 0

        def run_in_process() -> None:
            t0 = time.perf_counter()
            _, parts = in_process(frame)
            inproc.append(time.perf_counter() - t0)
            for k in STAGES:
                stages[k].append(parts[k])

        for i in range(iters):
            if i % 2:  # each path follows the other equally often
                run_in_process()
            t0 = time.perf_counter()
            inst = client.segment(frame)
            lat.append(time.perf_counter() - t0)
            timing = client.last_timing
            enc.append(timing["encode_s"])
            call.append(timing["infer_s"])
            dec.append(timing["decode_s"])
            dets = len(inst)
            if not i % 2:
                run_in_process()
        after = _stats(stats_client, models)
    delta = {m: {k: after[m][k] - before[m][k] for k in after[m]} for m in models}
    n = max(delta[served]["count"], 1.0)
    server_ms = delta[served]["success_ns"] / n / 1e6
    queued = models[1:] or models  # an ensemble queues in its steps, a single model in its own scheduler
    queue_ms = sum(delta[m]["queue_ns"] for m in queued) / n / 1e6

    def step(m: str, in_process_s: list[float]) -> dict:
        count = max(delta[m]["count"], 1.0)
        return {"model": m, "server_ms": delta[m]["success_ns"] / count / 1e6,
                "infer_ms": delta[m]["infer_ns"] / count / 1e6, "in_process_ms": float(np.mean(in_process_s)) * 1000}

    if len(models) > 1:
        steps = {stage: step(m, stages[stage]) for stage, m in zip(STAGES, models[1:])}
    else:
        steps = {"all": step(served, [sum(parts) for parts in zip(*stages.values())])}
    return BudgetRow(input=input_mode, frame=f"{frame.shape[1]}x{frame.shape[0]}", model=served, requests=len(lat),
                     instances=dets,
                     p50_ms=percentile_ms(lat, 50), p95_ms=percentile_ms(lat, 95), in_process_p50_ms=percentile_ms(inproc, 50),
                     in_process_p95_ms=percentile_ms(inproc, 95), encode_ms=percentile_ms(enc, 50),
                     transfer_ms=float(np.mean(call)) * 1000 - server_ms, queue_ms=queue_ms,
                     server_compute_ms=server_ms - queue_ms, decode_ms=percentile_ms(dec, 50), steps=steps)


def format_budget(rows: list[BudgetRow]) -> str:
    lines = ["| frame | input | model | p50 ms | p95 ms | in-process p50 ms (p95) | p50 / in-process | encode | "
             "transfer | queue | server compute | decode | instances |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.frame} | {r.input} | `{r.model}` | {r.p50_ms:.1f} | {r.p95_ms:.1f} | {r.in_process_p50_ms:.1f} "
                     f"({r.in_process_p95_ms:.1f}) | **{r.ratio:.3f}** | {r.encode_ms:.2f} | {r.transfer_ms:.2f} | "
                     f"{r.queue_ms:.2f} | {r.server_compute_ms:.1f} | {r.decode_ms:.2f} | "
                     f"{r.instances} |")
    lines.append("(milliseconds; encode, decode: client medians; transfer, queue, server compute: means over the "
                 "timed requests, from Triton's statistics)")
    lines += ["", "Per step, means: the step in Triton (its queue + compute, Triton's statistics; a Python-backend "
              "step's time includes moving tensors to and from its stub process; of which execute(): Triton's "
              "compute_infer) against the same stage in process (png's pre-processing step also decodes the PNG; "
              "a one-process model is one step, `all`).",
              "| frame | input | step | in Triton ms | of which execute() ms | in process ms | difference ms |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        for stage, st in r.steps.items():
            lines.append(f"| {r.frame} | {r.input} | {stage} (`{st['model']}`) | {st['server_ms']:.1f} | "
                         f"{st['infer_ms']:.1f} | {st['in_process_ms']:.1f} | "
                         f"{st['server_ms'] - st['in_process_ms']:+.1f} |")
    return "\n".join(lines)


def frame_of(size_hw: tuple[int, int], image: str | Path | None = None) -> np.ndarray:
    """An RGB uint8 frame of size (h, w): `image` resized, or seeded random pixels."""
    h, w = size_hw
    if image is None:
        return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    import cv2

    from boxinst_serve.preprocess import read_image

    return np.ascontiguousarray(cv2.resize(read_image(image), (w, h), interpolation=cv2.INTER_LINEAR))
