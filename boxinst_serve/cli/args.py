"""The argparse types the verbs share: sizes, ranges, integer lists, camera frame sizes. Each raises
argparse.ArgumentTypeError, which argparse prints as the usage error."""
from __future__ import annotations

import argparse

from boxinst_serve.config import parse_size  # noqa: F401 (a type of these verbs too: '512', '800x1333' as HxW)


def parse_range(text: str) -> tuple[int, int]:
    """'15' -> (15, 15); '1-6' -> (1, 6)."""
    try:
        lo, _, hi = text.partition("-")
        bounds = (int(lo), int(hi or lo))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or MIN-MAX, got {text!r}") from None
    if not 1 <= bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"expected 1 <= MIN <= MAX, got {text!r}")
    return bounds


def parse_ints(text: str) -> tuple[int, ...]:
    """'1,2,4' -> (1, 2, 4)."""
    try:
        return tuple(int(t) for t in text.split(",") if t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def parse_frame_sizes(text: str) -> tuple[tuple[int, int], ...]:
    """'640x480,1280x720' (WIDTHxHEIGHT, as cameras say it) -> ((480, 640), (720, 1280)) as (h, w)."""
    sizes = []
    for item in (t for t in text.split(",") if t):
        w, h = parse_size(item)
        sizes.append((h, w))
    return tuple(sizes)


def add_client_security(s: argparse.ArgumentParser) -> None:
    """--url: how to reach a secured server (docs/deployment.md, "Securing a server")."""
    g = s.add_argument_group("--url: a secured server")
    g.add_argument("--api-key", default=None,
                   help="the server's key (default: $BOXINST_API_KEY); sent as a header on every call")
    g.add_argument("--ssl", action="store_true", help="TLS, trusting the system's certificate authorities")
    g.add_argument("--tls-ca", default=None, help="TLS, trusting this CA certificate (PEM) for the server's")
    g.add_argument("--tls-client-cert", default=None, help="mutual TLS: this client's certificate (PEM)")
    g.add_argument("--tls-client-key", default=None, help="mutual TLS: this client's private key (PEM)")


def client_security(args: argparse.Namespace) -> dict:
    """BoxInstClient keyword arguments from add_client_security's flags (only those given)."""
    kwargs = {"ssl": bool(args.ssl or args.tls_ca or args.tls_client_cert), "root_certificates": args.tls_ca,
              "certificate_chain": args.tls_client_cert, "private_key": args.tls_client_key,
              "api_key": args.api_key}
    return {k: v for k, v in kwargs.items() if v}


def add_queue_flags(s: argparse.ArgumentParser, keep: bool = False) -> None:
    """The bounded queue and deadline of every queued model (boxinst_serve/serving/queue.py).
    keep: a flag not given keeps what the repository says (serve); else the defaults apply (export)."""
    from boxinst_serve.serving.queue import QUEUE_PER_INSTANCE, QUEUE_TIMEOUT_MS

    unset = "the repository's (export writes " if keep else "default "
    end = ")" if keep else ""
    g = s.add_argument_group("bounded queue and deadline (docs/deployment.md, \"Bounded queue and deadlines\")")
    g.add_argument("--queue-per-instance", type=int, default=None, metavar="N",
                   help=f"requests each model may hold waiting per instance, beyond which Triton refuses at once "
                        f"(max_queue_size = N x instances; 0: unbounded); {unset}{QUEUE_PER_INSTANCE}{end}")
    g.add_argument("--queue-timeout-ms", type=int, default=None, metavar="MS",
                   help=f"the longest a request may wait in a queue before it is refused, and the ceiling of "
                        f"clients' deadlines (0: none, and clients' deadlines are ignored); {unset}"
                        f"{QUEUE_TIMEOUT_MS}{end}")


def queue_policy(args: argparse.Namespace, base=None):
    """The QueuePolicy of add_queue_flags' flags, each flag not given taken from `base` (a
    repository's policy; None: the defaults)."""
    import dataclasses

    from boxinst_serve.serving.queue import QueuePolicy

    given = {k: v for k, v in (("per_instance", args.queue_per_instance), ("timeout_ms", args.queue_timeout_ms))
             if v is not None}
    return dataclasses.replace(base if base is not None else QueuePolicy(), **given)
