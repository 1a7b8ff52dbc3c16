"""`boxinst serve`: start the `tritonserver` binary that the nvidia-pytriton wheel ships on a model
repository, wait until every model is ready, and shut it down cleanly.

The wheel's Python backend needs a stub built for the running Python (the wheel keeps one per
version under pytriton/tritonserver/python_backend_stubs/3.X/; without it a model fails with
"triton_python_backend_stub is not found"): we build a private backend folder of links (never
writing into site-packages) and put this interpreter's bin folder first on PATH, so the stub's
`python3` imports this package and its dependencies. Binds to 127.0.0.1 unless told otherwise."""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from boxinst_serve.protocol import OPTIONAL_MODELS, REQUIRED_MODELS
from boxinst_serve.serving.processes import model_of, remove_regions, server_stubs
from boxinst_serve.serving.security import WILDCARD_HOSTS, Security

log = logging.getLogger(__name__)


class ServerError(RuntimeError):
    """tritonserver could not be started or did not become ready (carries its log tail)."""


def pytriton_root() -> Path:
    try:
        import pytriton
    except ImportError as e:
        raise ServerError("the tritonserver binary comes with nvidia-pytriton: "
                          "`pip install 'boxinst-serve[serve]'`") from e
    root = Path(pytriton.__file__).resolve().parent / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise ServerError(f"nvidia-pytriton is installed but {root}/bin/tritonserver is missing")
    return root


def build_backend_dir(dest: Path) -> Path:
    """DEST/python/ with links to the wheel's Python backend and the stub for this Python."""
    root = pytriton_root()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"nvidia-pytriton has no Python backend stub for Python {version} ({stub})")
    py = dest / "python"
    py.mkdir(parents=True, exist_ok=True)
    for src in (root / "backends" / "python" / "libtriton_python.so",
                root / "backends" / "python" / "triton_python_backend_utils.py", stub):
        link = py / src.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(src)
    return dest


# A port chosen for the server (a port of 0) can be taken by another process before tritonserver
# binds it, which it does only after loading every model (seconds): start() then chooses again.
PORT_ATTEMPTS = 3
_BIND_FAILURE = re.compile(r"failed to start (\w+) service: .*Socket '(.*):(\d+)' already in use")


class PortTaken(ServerError):
    """A port of the server is in use by another process (carries the port)."""

    def __init__(self, message: str, port: int):
        super().__init__(message)
        self.port = port


def free_ports(hosts: list[str]) -> list[int]:
    """One port for each host that nothing is bound to now, all different (bound at once). Only a
    hint: another process may bind it before the caller does; a TritonServer with ports of 0
    chooses its own and chooses again when that happens."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET6 if ":" in h else socket.AF_INET)) for h in hosts]
        for s, host in zip(socks, hosts):
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]


def free_port(host: str = "127.0.0.1") -> int:
    """A port that nothing is bound to on host now (a hint: see free_ports)."""
    return free_ports([host])[0]


@dataclass
class TritonServer:
    """A running tritonserver. Use as a context manager or call stop(). A port of 0: any free port,
    chosen by start() (again if another process takes it before tritonserver binds it) and kept by
    restart()."""

    repository: Path
    host: str = "127.0.0.1"
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    log_path: Path | None = None
    exit_timeout_s: int = 30
    # HTTP and metrics have no TLS in Triton 2.51: they stay on loopback whatever gRPC binds to
    # (serving/security.py, check_exposure).
    http_host: str = "127.0.0.1"
    metrics_host: str = "127.0.0.1"
    security: Security | None = None  # TLS on gRPC and an API key (serving/security.py)
    process: subprocess.Popen | None = None
    _stubs_at_start: list[str] = field(default_factory=list)  # step instances once ready
    _regions: set[str] = field(default_factory=set)  # the steps' shared-memory regions seen
    steps_died: int = 0  # step processes that died since start (the supervisor counts them)
    _log_in_workdir: bool = False  # the log lives (and dies) with the temporary folder
    _workdir: tempfile.TemporaryDirectory | None = None

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def command(self, backend_dir: Path) -> list[str]:
        return [str(pytriton_root() / "bin" / "tritonserver"),
                f"--model-repository={self.repository}",
                f"--backend-directory={backend_dir}",
                f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
                f"--http-address={self.http_host}", f"--http-port={self.http_port}",
                f"--metrics-address={self.metrics_host}", f"--metrics-port={self.metrics_port}",
                "--allow-metrics=true", "--allow-gpu-metrics=false",
                f"--exit-timeout-secs={self.exit_timeout_s}",
                "--strict-readiness=true", "--exit-on-error=true", "--log-verbose=0",
                # Every model loaded at start, and the repository API able to unload and load one
                # again: how the supervisor brings back a step whose process died (serving/supervisor.py).
                "--model-control-mode=explicit", "--load-model=*",
                *(self.security.tritonserver_args() if self.security is not None else [])]

    def environment(self) -> dict[str, str]:
        env = os.environ.copy()
        # The stub runs the first python3 on PATH: this interpreter's, with this package installed.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        # Make the repository's Python models import this very boxinst_serve: the folder that holds
        # it (a checkout, site-packages, a `pip install --target` folder) goes first on their path.
        pkg_root = str(Path(__file__).resolve().parents[2])  # .../boxinst_serve/serving/server.py
        env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        # Each step runs in its own stub process: keep their thread pools from oversubscribing.
        env.setdefault("OMP_NUM_THREADS", "1")
        return env

    def _endpoints(self) -> list[tuple[str, str]]:
        """(port attribute, host) of gRPC, HTTP and metrics."""
        return [("grpc_port", self.host), ("http_port", self.http_host), ("metrics_port", self.metrics_host)]

    def start(self, timeout_s: float = 120.0) -> "TritonServer":
        """Start tritonserver and wait (up to timeout_s for each try) until every model is ready.
        Ports of 0 are chosen here, and chosen again (PORT_ATTEMPTS tries) when another process
        takes one first; a port given is used or refused (ServerError)."""
        repo = Path(self.repository).resolve()
        self.repository = repo
        missing = [m for m in REQUIRED_MODELS if not (repo / m / "config.pbtxt").is_file()]
        if missing:
            # The export writes the network and adds the ensembles and steps that this package carries.
            raise ServerError(f"{repo} is not a boxinst model repository: missing {', '.join(missing)} (write "
                              "it with `boxinst export --checkpoint CKPT --triton REPOSITORY`)")
        chosen = [(name, host) for name, host in self._endpoints() if getattr(self, name) == 0]
        attempt = 1
        while True:
            for (name, _), port in zip(chosen, free_ports([h for _, h in chosen]) if chosen else []):
                setattr(self, name, port)
            try:
                return self._start_once(timeout_s)
            except PortTaken as e:
                if e.port not in {getattr(self, name) for name, _ in chosen} or attempt == PORT_ATTEMPTS:
                    raise
                attempt += 1
                log.warning("%s: choosing free ports again (try %d of %d)", e, attempt, PORT_ATTEMPTS)

    def _start_once(self, timeout_s: float) -> "TritonServer":
        """One start on the ports set; PortTaken when one of them is in use, before or at its bind."""
        for name, host in self._endpoints():
            port = getattr(self, name)
            with socket.socket() as s:
                if s.connect_ex((host if host not in WILDCARD_HOSTS else "127.0.0.1", port)) == 0:
                    raise PortTaken(f"port {port} on {host} is already in use", port)
        self.steps_died = 0
        self._workdir = tempfile.TemporaryDirectory(prefix="boxinst-serve-")
        backend_dir = build_backend_dir(Path(self._workdir.name) / "backends")
        if self.log_path is None or self._log_in_workdir:
            self.log_path = Path(self._workdir.name) / "tritonserver.log"
            self._log_in_workdir = True
        log_file = open(self.log_path, "ab")
        log_start = log_file.tell()  # this start's part of a log that may hold earlier ones
        log.info("starting tritonserver on %s (gRPC %d, HTTP %d, metrics %d), log %s", self.host, self.grpc_port,
                 self.http_port, self.metrics_port, self.log_path)
        self.process = subprocess.Popen(self.command(backend_dir), env=self.environment(), stdout=log_file,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        log_file.close()
        try:
            self.wait_ready(timeout_s)
        except BaseException as e:
            taken = self._bind_failure(log_start) if isinstance(e, ServerError) else None
            # Steps loaded before a failed bind outlive the server for a moment: their regions are
            # removed with them (measured: 5 left in /dev/shm per failed start otherwise).
            self._regions.update(s.shm_region for s in server_stubs(self.process.pid).values())
            self.stop()
            if taken is not None:
                raise taken from e
            raise
        return self

    def _bind_failure(self, log_start: int) -> PortTaken | None:
        """PortTaken if tritonserver exited because a port was in use at its bind (its log says so)."""
        if self.process is None or self.process.poll() is None:
            return None
        try:
            with open(self.log_path, "rb") as f:
                f.seek(log_start)
                text = f.read().decode(errors="replace")
        except OSError:
            return None
        m = _BIND_FAILURE.search(text)
        if m is None:
            return None
        service, host, port = m.group(1), m.group(2), int(m.group(3))
        return PortTaken(f"port {port} on {host} ({service}) was taken by another process before tritonserver "
                         f"bound it", port)

    def served_models(self) -> tuple[str, ...]:
        repo = Path(self.repository)
        return REQUIRED_MODELS + tuple(m for m in OPTIONAL_MODELS if (repo / m / "config.pbtxt").is_file())

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-lines:])
        except (OSError, TypeError):
            return ""

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        models = self.served_models()
        client = self.grpc_client()
        last_error = None
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise ServerError(f"tritonserver exited with code {self.process.returncode}:\n{self.log_tail()}")
                try:
                    if client.is_server_ready(client_timeout=2) and all(
                            client.is_model_ready(m, client_timeout=2) for m in models):
                        stubs = server_stubs(self.process.pid)
                        self._stubs_at_start = sorted(stubs)
                        self._regions.update(s.shm_region for s in stubs.values())
                        return
                except Exception as e:  # noqa: BLE001 - not listening yet
                    last_error = e
                time.sleep(0.25)
        finally:
            client.close()
        why = f" (last answer: {last_error})" if last_error is not None else ""
        raise ServerError(f"tritonserver was not ready after {timeout_s:.0f} s{why}:\n{self.log_tail()}")

    def grpc_client(self):
        """A tritonclient gRPC client of this server (its own connection: close it)."""
        import tritonclient.grpc as grpcclient

        from boxinst_serve.client.grpc_client import ApiKeyPlugin

        # On every address: connect through loopback. With TLS: trust, and under mutual TLS
        # present, the server's own certificate (Security.own_client_options).
        host = "127.0.0.1" if self.host in WILDCARD_HOSTS else self.host
        options = self.security.own_client_options(host) if self.security is not None else {}
        target = f"[{host}]" if ":" in host and not host.startswith("[") else host  # IPv6
        client = grpcclient.InferenceServerClient(f"{target}:{self.grpc_port}", **options)
        if self.security is not None and self.security.api_key is not None:
            client.register_plugin(ApiKeyPlugin(self.security.api_key))  # the key on every call
        return client

    def dead_steps(self) -> list[str]:
        """Models whose Python-backend step process seen at start is gone (serving/supervisor.py)."""
        if self.process is None or self.process.poll() is not None:
            return []
        alive = set(server_stubs(self.process.pid))
        return sorted({model_of(i) for i in set(self._stubs_at_start) - alive})

    def restart(self, timeout_s: float = 120.0) -> "TritonServer":
        """Stop (killing at once: it is restarted because it is broken) and start on the same ports."""
        self.stop(timeout_s=0)
        return self.start(timeout_s)

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM (Triton finishes in-flight requests, up to exit_timeout_s), then SIGKILL. With a
        dead step Triton would wait out its exit timeout for it: then the wait is 3 s."""
        p = self.process
        code = None
        if p is not None:
            if p.poll() is None:
                self._regions.update(s.shm_region for s in server_stubs(p.pid).values())
                if timeout_s is None:
                    # Triton waits out its exit timeout for a step that died, even one reloaded since
                    # (measured: 30.7 s after a recovery): such a server gets 3 s, then SIGKILL.
                    broken = self.steps_died or self.dead_steps()
                    timeout_s = min(3.0, self.exit_timeout_s) if broken else self.exit_timeout_s + 10
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    log.warning("tritonserver did not stop in %.0f s: killing it", timeout_s)
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
            else:
                try:  # it died (killed from outside): its steps may outlive it for a moment
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            removed = remove_regions(sorted(self._regions))  # what killed steps could not remove
            if removed:
                log.info("removed %d shared-memory region(s) left by the server's killed steps", len(removed))
            self._regions.clear()
            code = p.returncode
            self.process = None
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None
        return code

    def __enter__(self) -> "TritonServer":
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_forever(server: TritonServer, timeout_s: float = 120.0, supervise=None) -> int:
    """Start, print the endpoint, forward SIGINT/SIGTERM as a clean shutdown, return its exit code.
    supervise: serving.supervisor.SupervisorSettings to heal dead steps and a dead server (None:
    no supervisor; then a server that exits ends this too)."""
    from boxinst_serve.serving.supervisor import Supervisor

    stop = {"signal": None}

    def handler(signum, frame):
        stop["signal"] = signum

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    supervisor = None
    try:
        server.start(timeout_s)
        print(f"boxinst serving {server.repository}: gRPC {server.grpc_url}, HTTP {server.http_host}:"
              f"{server.http_port}, metrics {server.metrics_host}:{server.metrics_port} (Ctrl-C stops)", flush=True)
        if supervise is not None:
            supervisor = Supervisor(server, supervise).start()
        while stop["signal"] is None:
            if supervisor is not None and supervisor.failed:
                print(f"boxinst serve: the supervisor {supervisor.failed}", file=sys.stderr)
                supervisor.stop()
                server.stop()
                return 1
            if supervisor is None and (server.process is None or server.process.poll() is not None):
                code = None if server.process is None else server.process.returncode
                print(f"tritonserver exited with code {code}:\n{server.log_tail()}", file=sys.stderr)
                server.stop()
                return code or 1
            time.sleep(0.2)
        print("stopping (in-flight requests finish first)...", flush=True)
        if supervisor is not None:
            supervisor.stop()
        server.stop()
        return 0
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if supervisor is not None:
            supervisor.stop()
        if server.process is not None:
            server.stop()


def which_tritonserver() -> str | None:
    """Path of the bundled binary, or one on PATH, or None."""
    try:
        return str(pytriton_root() / "bin" / "tritonserver")
    except ServerError:
        return shutil.which("tritonserver")
