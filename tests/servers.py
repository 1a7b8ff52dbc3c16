"""Starting and stopping a real `boxinst serve` (the tritonserver binary of the nvidia-pytriton
wheel) for the tests that talk to one."""
from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.parity import BOX_TOL_PX, MIN_MASK_IOU, SCORE_TOL

ROOT = Path(__file__).resolve().parents[1]


def repository_copy(dest: Path) -> Path:
    """A copy of model_repository/ without a network (the test exports one into it)."""
    from boxinst_serve.protocol import FUSED_RAW_MODEL

    shutil.copytree(ROOT / "model_repository", dest,
                    ignore=shutil.ignore_patterns("boxinst_net", ".boxinst_*", FUSED_RAW_MODEL))
    return dest


@contextlib.contextmanager
def running_server(repo: Path, root: Path, ready_timeout_s: float = 240, serve_args: tuple[str, ...] = ()):
    """`boxinst serve --repository repo [serve_args]` on ports it chooses (0: free ports, chosen again
    if another process takes one first), logs under root. Yields {"url", "proc", "log"}; on exit
    stops it with SIGINT and asserts it exited 0."""
    log = root / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "boxinst_serve.cli", "serve", "--repository", str(repo),
                             "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0",
                             "--log", str(root / "tritonserver.log"), *serve_args],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=ROOT)
    url = wait_serving(proc, log, root / "tritonserver.log", ready_timeout_s)
    try:
        yield {"url": url, "proc": proc, "log": log}
    finally:
        if proc.poll() is None:
            assert stop_serving(proc) == 0, log.read_text()


def stop_serving(proc: subprocess.Popen) -> int:
    """Stop `boxinst serve` as Ctrl-C does (SIGINT) and return its exit code; killed, and
    TimeoutExpired raised, when it has not exited within 60 s."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def wait_serving(proc: subprocess.Popen, log: Path, triton_log: Path, timeout_s: float = 240,
                 what: str = "boxinst serve") -> str:
    """The gRPC endpoint that `boxinst serve` (the process `proc`, its output in `log`) prints once
    every model is ready ("boxinst serving REPO: gRPC HOST:PORT, ..."), checked ready; kills it and
    fails the test, with both logs, when it exits or takes more than `timeout_s`."""
    from boxinst_serve.client import BoxInstClient

    def fail(why: str):
        proc.kill()
        tail = triton_log.read_text()[-5000:] if triton_log.exists() else ""
        pytest.fail(f"{what} {why}:\n{log.read_text()}\n{tail}")

    deadline = time.monotonic() + timeout_s
    while (found := re.search(r"^boxinst serving .*: gRPC (\S+), HTTP", log.read_text(), re.MULTILINE)) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            fail(f"did not come up in {timeout_s:.0f} s")
        time.sleep(0.2)
    url = found.group(1)
    with BoxInstClient(url, timeout_s=30) as probe:
        if not probe.is_ready():
            fail(f"said it serves on {url}, which is not ready")
    return url


def assert_same(got, ref):
    """Same detections in the same order (boxes within BOX_TOL_PX, scores within SCORE_TOL, the same
    classes), and masks with IoU >= MIN_MASK_IOU where one of the two is not empty; at least one
    non-empty mask, so that agreement is never two empty masks (tolerances: tests/parity.py)."""
    assert len(got) == len(ref) > 0
    assert got.image_size == ref.image_size
    np.testing.assert_allclose(got.boxes, ref.boxes, rtol=0, atol=BOX_TOL_PX)
    np.testing.assert_allclose(got.scores, ref.scores, rtol=0, atol=SCORE_TOL)
    np.testing.assert_array_equal(got.classes, ref.classes)
    compared = 0
    for a, b in zip(got.masks, ref.masks):
        union = (a | b).sum()
        if union:
            compared += 1
            assert (a & b).sum() / union >= MIN_MASK_IOU
    assert compared > 0, "every mask compared is empty"


def encode(image_rgb: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR) if image_rgb.ndim == 3 else image_rgb)
    assert ok
    return buf.tobytes()
