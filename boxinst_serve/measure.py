"""What every benchmark shares (one copy each): the machine description printed above a result,
percentiles in milliseconds, a stage clock for the pre/network/post split, the timed loop with
its warm-up, and the "machine: ..." header or JSON output of a result.

Numpy and the standard library only: the GPU check (apps/bench/gpu.py) imports it on a machine
without OpenCV, pycocotools or ONNX."""
from __future__ import annotations

import json
import os
import platform
import time
from typing import Any, Callable, Sequence

import numpy as np

INT8_FLAGS = ("avx512_vnni", "avx_vnni", "avx512f", "avx2")  # what ONNX Runtime's INT8 kernels use, best first
VNNI_FLAGS = ("avx512_vnni", "avx_vnni")


def read_cpuinfo() -> str:
    """/proc/cpuinfo's text ('' where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def cpu_model_and_flags(cpuinfo: str) -> tuple[str, set[str]]:
    """(CPU model name, ISA flags of the first CPU) from /proc/cpuinfo's text."""
    cpu, flags = platform.processor() or platform.machine(), set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            cpu = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
            break
    return cpu, flags


def machine_description(cpuinfo: str | None = None) -> str:
    """'<CPU model>, N logical CPUs, <vector ISA>': the ISA matters for INT8 (VNNI or not).
    cpuinfo: /proc/cpuinfo's text (read when None)."""
    if cpuinfo is None:
        cpuinfo = read_cpuinfo()
    cpu, flags = cpu_model_and_flags(cpuinfo)
    isa = [f for f in INT8_FLAGS if f in flags]
    if not cpuinfo:
        isa_text = ""
    elif any(f in isa for f in VNNI_FLAGS):
        isa_text = ", VNNI (" + " ".join(isa) + ")"
    else:
        isa_text = ", no VNNI (" + (" ".join(isa) or "no AVX2") + ")"
    return f"{cpu}, {os.cpu_count()} logical CPUs{isa_text}"


def percentile_ms(seconds: Sequence[float], q: float) -> float:
    """The q-th percentile of durations in seconds, in milliseconds (nan when there are none)."""
    return float(np.percentile(np.asarray(seconds, dtype=np.float64) * 1000.0, q)) if len(seconds) else float("nan")


class StageClock:
    """Times consecutive stages of one call: `lap(name)` ends the stage begun at the previous lap
    (or at construction). sync: called before each reading (CUDA synchronisation), or None."""

    def __init__(self, sync: Callable[[], None] | None = None):
        self._sync = sync
        if sync:
            sync()
        self._last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        if self._sync:
            self._sync()
        now = time.perf_counter()
        self.laps[name] = self.laps.get(name, 0.0) + now - self._last
        self._last = now


def timed_loop(step: Callable[[], dict[str, float]], iters: int, warmup: int) -> dict[str, list[float]]:
    """Calls `step` warmup + iters times; step returns seconds per stage ({"pre": ..., ...}).
    -> {stage: [seconds per timed call]} plus "total" (the stages' sum), warm-up calls dropped."""
    times: dict[str, list[float]] = {}
    for i in range(warmup + iters):
        laps = step()
        if i >= warmup:
            for name, s in laps.items():
                times.setdefault(name, []).append(s)
            times.setdefault("total", []).append(sum(laps.values()))
    return times


def print_result(result: dict[str, Any], table: str, as_json: bool, header: str = "") -> None:
    """A benchmark's output: `result` as one JSON line (with "machine" added), or the line
    "machine: <description>[; header]" and the table."""
    machine = machine_description()
    if as_json:
        print(json.dumps({"machine": machine, **result}))
    else:
        print(f"machine: {machine}" + (f"; {header}" if header else ""))
        print(table)
