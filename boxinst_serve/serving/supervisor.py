"""Keeps a running tritonserver healthy: `boxinst serve` runs one beside the server.

Triton 2.51's Python backend does not restart a step whose stub process died (an out-of-memory
kill, a crash in a native library): every request through it fails with "Stub process ... is not
healthy" while the ready endpoint still answers ready (triton-inference-server/server#8604). The
supervisor closes that gap:

- **watch**: every `poll_s` it lists the server's stub processes (`/proc`: each stub's argv names
  its instance, e.g. `boxinst_postprocess_0_0`, and its parent server's pid) and compares them with
  those seen once the server was ready;
- **probe**: every `probe_s` (and on demand, `probe()`) a tiny inference through each ensemble; a
  refusal of a bounded queue (full, or the probe past its deadline: serving/queue.py) or the probe's
  own deadline passing is load, not a fault, while the model answered a request within
  `busy_window_s` (Triton's statistics);
- **heal**: a dead or failing step is *unloaded and loaded again* through the model-repository API
  (the server runs with `--model-control-mode=explicit`). Unloading makes the server's own ready
  endpoint answer not ready until the load completes, so probes and load balancers see the outage.
  A plain `load` of an unchanged model is a no-op in 2.51 (measured: the dead stub stayed dead),
  hence unload first. Measured here (2 cores): the reload takes 1.6-2.4 s, a full server restart
  5-17 s; so reload first, and restart tritonserver on the same ports only when the reload does not
  bring the step back or the server process itself died;
- **back off and give up**: recoveries back off (`backoff_s`), and after `max_recoveries` within
  `window_s` the supervisor gives up loudly (`failed` is set; `boxinst serve` exits non-zero so
  that systemd or Kubernetes restarts the whole thing).

Every event is logged with its cause and kept in `events` (time, kind, detail)."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from boxinst_serve.protocol import ENSEMBLE_MODEL, FUSED_RAW_MODEL, RAW_MODEL
from boxinst_serve.serving.processes import Stub, server_stubs

log = logging.getLogger(__name__)
PROBE_SIZE = (32, 32)  # a tiny frame: enough to run every step, too small to cost anything


class GaveUp(RuntimeError):
    """The supervisor stopped trying: too many recoveries in its window."""


@dataclass
class SupervisorSettings:
    poll_s: float = 0.5  # how often the step processes are listed
    probe_s: float = 10.0  # how often a tiny inference goes through each ensemble (0: never)
    probe_timeout_s: float = 10.0
    # A probe refused for a full queue (or past its deadline) is load while the model answered a
    # request this recently; a hung step fills its queue but answers nothing.
    busy_window_s: float = 30.0
    reload_timeout_s: float = 60.0  # a step's unload + load
    max_recoveries: int = 5  # within window_s: then give up
    window_s: float = 300.0
    backoff_s: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0, 8.0)  # before the 1st, 2nd, ... recovery in the window


# The probe's own deadline passing (gRPC DEADLINE_EXCEEDED): behind a long inference on a loaded
# CPU (an R-50 photo took longer than probe_timeout_s on 2 busy cores and the supervisor reloaded
# a serving model under a test's requests), so it is load as well while the model answers.
PROBE_DEADLINE = "DEADLINE_EXCEEDED"


@dataclass
class Supervisor:
    """Watches `server` (a started serving.server.TritonServer) from a daemon thread: `start()`,
    `stop()`. `healthy` is False from a detected failure until the server answers again."""

    server: Any
    settings: SupervisorSettings = field(default_factory=SupervisorSettings)
    events: list[tuple[float, str, str]] = field(default_factory=list)
    failed: str | None = None  # why it gave up
    healthy: bool = True

    def __post_init__(self):
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one recovery at a time (the watch loop and probe() on demand)
        self._started_ms = time.time() * 1000  # busy refusals before any answer count from here
        self._thread: threading.Thread | None = None
        self._recoveries: list[float] = []

    # ---- lifecycle ------------------------------------------------------------------------------
    def start(self) -> "Supervisor":
        stubs = sorted(self._stubs())
        self._record("watch", f"{len(stubs)} step process(es): {', '.join(stubs) or 'none'}")
        self._thread = threading.Thread(target=self._run, name="boxinst-supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.reload_timeout_s)
            self._thread = None

    # ---- what is running ------------------------------------------------------------------------
    def _stubs(self) -> dict[str, Stub]:
        p = self.server.process
        return server_stubs(p.pid) if p is not None and p.poll() is None else {}

    def _record(self, kind: str, detail: str, level: int = logging.INFO) -> None:
        self.events.append((time.time(), kind, detail))
        log.log(level, "supervisor: %s: %s", kind, detail)

    # ---- probing --------------------------------------------------------------------------------
    def probe(self) -> str | None:
        """One tiny inference through each ensemble the server has. -> None when all answered, else
        what failed (model and the server's message)."""
        import numpy as np

        import tritonclient.grpc as grpcclient

        from boxinst_serve.client.grpc_client import QUEUE_FULL, QUEUE_TIMEOUT, _raw_request, _request

        frame = np.full((*PROBE_SIZE, 3), 114, np.uint8)
        client = self.server.grpc_client()
        try:
            for model in self.server.served_models():
                if model == ENSEMBLE_MODEL:
                    import cv2

                    inputs, outputs = _request(grpcclient, cv2.imencode(".png", frame)[1].tobytes(), "rle")
                elif model in (RAW_MODEL, FUSED_RAW_MODEL):
                    inputs, outputs = _raw_request(grpcclient, frame, "rle")
                else:
                    continue
                try:
                    client.infer(model, inputs, outputs=outputs, client_timeout=self.settings.probe_timeout_s)
                except Exception as e:  # noqa: BLE001 - any failure of the probe is the finding
                    if any(m in str(e) for m in (QUEUE_FULL, QUEUE_TIMEOUT, PROBE_DEADLINE)) \
                            and self._served_recently(client, model):
                        continue  # busy, and serving: load, not a fault
                    return f"{model}: {e}"
            return None
        finally:
            client.close()

    def _served_recently(self, client, model: str) -> bool:
        """Whether `model` answered a request within busy_window_s (Triton's statistics: its last
        inference), or the supervisor started that recently: a step that hangs fills its queue
        too, but answers nothing."""
        try:
            stats = client.get_inference_statistics(model, as_json=True, client_timeout=self.settings.probe_timeout_s)
            last_ms = int(stats["model_stats"][0].get("last_inference", 0))
        except Exception:  # noqa: BLE001 - no statistics: the refusal stands as the finding
            return False
        # A server flooded as soon as it started has answered nothing yet: the window starts then.
        return time.time() * 1000 - max(last_ms, self._started_ms) < 1000 * self.settings.busy_window_s

    # ---- healing --------------------------------------------------------------------------------
    def _backoff(self) -> None:
        now = time.monotonic()
        self._recoveries = [t for t in self._recoveries if now - t < self.settings.window_s]
        if len(self._recoveries) >= self.settings.max_recoveries:
            raise GaveUp(f"{len(self._recoveries)} recoveries within {self.settings.window_s:.0f} s")
        wait = self.settings.backoff_s[min(len(self._recoveries), len(self.settings.backoff_s) - 1)]
        self._recoveries.append(now)
        if wait:
            self._record("backoff", f"waiting {wait:g} s before recovery {len(self._recoveries)}")
            self._stop.wait(wait)

    def reload(self, models: list[str]) -> None:
        """Unload then load each model (its dependants, the ensembles, follow: not ready meanwhile)."""
        client = self.server.grpc_client()
        try:
            for model in models:
                client.unload_model(model, client_timeout=self.settings.reload_timeout_s)
            for model in models:
                client.load_model(model, client_timeout=self.settings.reload_timeout_s)
        finally:
            client.close()
        self.server.wait_ready(self.settings.reload_timeout_s)

    def recover(self, models: list[str], cause: str) -> None:
        """Bring the server back after `cause`: reload `models` (all Python steps if empty), and
        restart tritonserver on the same ports if that does not make it answer."""
        with self._lock:
            if models and not set(models) & set(self.server.dead_steps()) and self.healthy:
                return  # already brought back by the other thread
            self.healthy = False
            self.server.steps_died += 1  # its stop is then short (serving/server.py: stop)
            self._backoff()
            t0 = time.monotonic()
            if self.server.process is not None and self.server.process.poll() is None:
                # A failed probe may have been a step that died meanwhile: reload the dead ones; if
                # none is dead (a step hangs), every step.
                targets = models or self.server.dead_steps() or sorted({s.model for s in self._stubs().values()})
                self._record("reload", f"{', '.join(targets)} ({cause})", logging.WARNING)
                try:
                    self.reload(targets)
                    failure = self.probe()
                except Exception as e:  # noqa: BLE001 - the restart below is the answer to any failure
                    failure = str(e)
                missing = set(targets) - {s.model for s in self._stubs().values()}
                if failure is None and not missing:
                    self._done(t0, "reload")
                    return
                self._record("reload failed", failure or f"no step process for {', '.join(sorted(missing))}",
                             logging.WARNING)
            self._record("restart", f"tritonserver on the same ports ({cause})", logging.WARNING)
            self.server.restart()
            self._done(t0, "restart")

    def _done(self, t0: float, how: str) -> None:
        self.healthy = True
        self._record("recovered", f"by {how} in {time.monotonic() - t0:.1f} s")

    # ---- the watch loop -------------------------------------------------------------------------
    def check(self) -> None:
        """One round of the watch: a dead server, dead steps; recovers what failed (the probe runs
        in its own thread: _probe_loop)."""
        p = self.server.process
        if p is None or p.poll() is not None:
            code = None if p is None else p.returncode
            self.recover([], f"tritonserver exited with code {code}")
            return
        dead = self.server.dead_steps()
        if dead:
            self.recover(dead, f"step process of {', '.join(dead)} died")

    def _probe_loop(self) -> None:
        """The probe in its own thread: a request stuck in a dying step must not delay the watch."""
        while not self._stop.wait(self.settings.probe_s):
            if self.failed:
                return
            failure = self.probe()
            if failure is not None:
                with self._lock:  # a recovery under way (the watch saw a dead step) finishes first
                    pass
                failure = self.probe()
            if failure is not None and not self._stop.is_set():
                self._guarded(lambda: self.recover([], f"probe failed: {failure}"))

    def _guarded(self, action) -> None:
        try:
            action()
        except GaveUp as e:
            self.failed = f"gave up: {e}; last events: " + "; ".join(
                f"{kind}: {detail}" for _, kind, detail in self.events[-4:])
            self.healthy = False
            self._record("gave up", self.failed, logging.ERROR)
        except Exception as e:  # noqa: BLE001 - keep watching; the next round retries
            self._record("error", f"{type(e).__name__}: {e}", logging.ERROR)

    def _run(self) -> None:
        if self.settings.probe_s:
            threading.Thread(target=self._probe_loop, name="boxinst-probe", daemon=True).start()
        while not self._stop.wait(self.settings.poll_s) and not self.failed:
            self._guarded(self.check)
