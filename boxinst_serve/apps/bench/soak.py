"""Soak test of a running server (`boxinst bench --url URL --soak SECONDS`): N clients for M
minutes on mixed inputs, valid (encoded images and raw frames) and invalid (bytes that are no
image, a 4-channel frame sent past the client's own check), reporting requests, failures,
p50/p99 and the resident memory of the server (tritonserver and its step processes) over time.

What a passing soak looks like: no valid request failed, no invalid one was accepted, and the
memory after the first minute (warm-up: allocators, caches, the dynamic batcher) stays flat."""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from boxinst_serve.client import BoxInstClient, BoxInstError
from boxinst_serve.measure import percentile_ms
from boxinst_serve.protocol import RAW_MODEL
from boxinst_serve.serving.processes import process_rss_bytes, server_processes

WARMUP_S = 60.0  # memory growth is measured from here on


@dataclass
class SoakReport:
    seconds: float
    concurrency: int
    requests: int = 0  # valid requests sent
    failed: int = 0  # valid requests that failed
    invalid: int = 0  # invalid requests sent
    invalid_accepted: int = 0  # invalid requests the server answered as if valid
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    rss_mb: list[tuple[float, float]] = field(default_factory=list)  # (seconds from start, server RSS MB)
    errors: list[str] = field(default_factory=list)  # the first few messages of failed valid requests

    def rss_at(self, t: float) -> float:
        """The first sample at or after t seconds (the last one if none)."""
        return next((mb for s, mb in self.rss_mb if s >= t), self.rss_mb[-1][1] if self.rss_mb else float("nan"))

    @property
    def growth_after_warmup(self) -> float:
        """(RSS at the end - RSS after the first minute) / RSS after the first minute."""
        base = self.rss_at(min(WARMUP_S, self.seconds))
        return (self.rss_mb[-1][1] - base) / base if self.rss_mb and base else float("nan")

    def to_dict(self) -> dict:
        return {**asdict(self), "growth_after_warmup": self.growth_after_warmup}


def _invalid_frame_request(client: BoxInstClient):
    """A 4-channel frame straight to the raw ensemble (the client's check_frame would stop it)."""
    import tritonclient.grpc as grpcclient

    from boxinst_serve.client.grpc_client import _mask_format_input

    frame = grpcclient.InferInput("image", [1, 16, 16, 4], "UINT8")
    frame.set_data_from_numpy(np.zeros((1, 16, 16, 4), np.uint8))
    return client._client.infer(RAW_MODEL, [frame, _mask_format_input(grpcclient, "rle")],
                                client_timeout=client.timeout_s)  # the client's plugin adds its key


def run_soak(url: str, image_bytes: bytes, frame: np.ndarray, seconds: float, concurrency: int = 4,
             invalid_every: int = 10, sample_s: float = 5.0, client_kwargs: dict | None = None) -> SoakReport:
    """`concurrency` clients for `seconds`; every `invalid_every`-th call of each is invalid
    (alternately undecodable bytes and a 4-channel frame), the others alternate the encoded image
    and the raw frame (RGB uint8 [H, W, 3]). The server's RSS is sampled every `sample_s`."""
    report = SoakReport(seconds=seconds, concurrency=concurrency)
    port = int(url.rsplit(":", 1)[1])
    pids = server_processes(port)

    def server_rss_mb() -> float:
        """RSS of the server's processes now (listed again: steps may have been restarted)."""
        nonlocal pids
        pids = server_processes(port) or pids
        return process_rss_bytes(pids) / 2**20

    latencies: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()

    def worker(k: int) -> None:
        with BoxInstClient(url, timeout_s=60, **(client_kwargs or {})) as client:
            i = k
            while not stop.is_set():
                i += 1
                if i % invalid_every == 0:
                    try:
                        (_invalid_frame_request(client) if (i // invalid_every) % 2 else
                         client.segment(b"\x89PNG but not an image"))
                        accepted = 1
                    except Exception:  # noqa: BLE001 - a refusal is the expected answer
                        accepted = 0
                    with lock:
                        report.invalid += 1
                        report.invalid_accepted += accepted
                    continue
                t0 = time.perf_counter()
                try:
                    client.segment(image_bytes if i % 2 else frame)
                    ok, message = True, ""
                except BoxInstError as e:
                    ok, message = False, str(e)
                with lock:
                    report.requests += 1
                    if ok:
                        latencies.append(time.perf_counter() - t0)
                    else:
                        report.failed += 1
                        if len(report.errors) < 5:
                            report.errors.append(message)

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(concurrency)]
    t_start = time.monotonic()
    for t in threads:
        t.start()
    from tqdm import tqdm

    with tqdm(total=int(seconds), desc="soak", unit="s") as bar:
        while (elapsed := time.monotonic() - t_start) < seconds:
            report.rss_mb.append((elapsed, server_rss_mb()))
            bar.n = int(elapsed)
            bar.set_postfix(requests=report.requests, failed=report.failed, rss_mb=f"{report.rss_mb[-1][1]:.0f}")
            time.sleep(min(sample_s, max(0.0, seconds - elapsed)))
    stop.set()
    for t in threads:
        t.join()
    report.rss_mb.append((time.monotonic() - t_start, server_rss_mb()))
    report.p50_ms, report.p99_ms = percentile_ms(latencies, 50), percentile_ms(latencies, 99)
    return report


def format_soak(r: SoakReport) -> str:
    start, warm, end = r.rss_mb[0][1], r.rss_at(min(WARMUP_S, r.seconds)), r.rss_mb[-1][1]
    lines = [f"soak {r.seconds:.0f} s at concurrency {r.concurrency}: {r.requests} valid requests, {r.failed} failed; "
             f"{r.invalid} invalid, {r.invalid_accepted} accepted; p50 {r.p50_ms:.1f} ms, p99 {r.p99_ms:.1f} ms",
             f"server RSS (all its processes): start {start:.0f} MB, after {min(WARMUP_S, r.seconds):.0f} s {warm:.0f} MB, "
             f"end {end:.0f} MB: growth after the first minute {100 * r.growth_after_warmup:+.1f}%"]
    lines += [f"failed: {e}" for e in r.errors]
    return "\n".join(lines)
