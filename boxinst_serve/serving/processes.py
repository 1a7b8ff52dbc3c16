"""The processes of a running tritonserver, read from /proc: its Python-backend step processes
(stubs), their shared-memory regions, and resident memory. Used by the launcher (serving/server.py:
which steps died, what a killed server left in /dev/shm), the supervisor and the soak benchmark."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

STUB_BINARY = b"triton_python_backend_stub"
INSTANCE_RE = re.compile(r"^(?P<model>.+)_\d+_\d+$")  # boxinst_postprocess_0_0 -> boxinst_postprocess


def model_of(instance: str) -> str:
    """A step instance's model: 'boxinst_postprocess_0_0' -> 'boxinst_postprocess'."""
    m = INSTANCE_RE.match(instance)
    return m.group("model") if m else instance


@dataclass(frozen=True)
class Stub:
    """One Python-backend step process: its instance name, model, pid and shared-memory region."""

    instance: str
    model: str
    pid: int
    shm_region: str


def server_stubs(server_pid: int, proc: Path = Path("/proc")) -> dict[str, Stub]:
    """{instance name: Stub} of the stub processes whose parent is tritonserver `server_pid`.
    A stub's argv: binary, model.py, shm region, shm sizes (2), parent pid, backend dir, shm
    message size, instance name, device (the Python backend's launch line)."""
    stubs = {}
    for p in proc.iterdir():
        if not p.name.isdigit():
            continue
        try:
            argv = (p / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) < 9 or not argv[0].endswith(STUB_BINARY) or argv[5] != str(server_pid).encode():
            continue
        instance = argv[8].decode(errors="replace")
        stubs[instance] = Stub(instance, model_of(instance), int(p.name), argv[2].decode(errors="replace"))
    return stubs


def process_rss_bytes(pids: list[int], proc: Path = Path("/proc")) -> int:
    """Summed resident memory of these processes (VmRSS), those that still exist."""
    total = 0
    for pid in pids:
        try:
            for line in (proc / str(pid) / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def remove_regions(names: list[str], shm_dir: Path = Path("/dev/shm")) -> list[str]:
    """Unlink the Python backend's shared-memory regions a killed server left; -> those removed."""
    removed = []
    for name in names:
        path = shm_dir / name.lstrip("/")
        try:
            os.unlink(path)
            removed.append(name)
        except FileNotFoundError:
            continue
    return removed


def server_processes(grpc_port: int, proc: Path = Path("/proc")) -> list[int]:
    """pids of the tritonserver listening on `grpc_port` (same host) and of its children (the steps)."""
    servers, parents = [], {}
    for p in proc.iterdir():
        if not p.name.isdigit():
            continue
        try:
            argv = (p / "cmdline").read_bytes().split(b"\0")
            stat = (p / "stat").read_text()
        except OSError:
            continue
        parents[int(p.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        if argv and argv[0].endswith(b"tritonserver") and f"--grpc-port={grpc_port}".encode() in argv:
            servers.append(int(p.name))
    return servers + [pid for pid, ppid in parents.items() if ppid in servers]
