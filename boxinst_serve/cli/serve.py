"""The serve verb: a Triton model repository served over gRPC until Ctrl-C (boxinst_serve.serving)."""
from __future__ import annotations

import argparse

from boxinst_serve.cli.args import add_queue_flags


def cmd_serve(args: argparse.Namespace) -> int:
    from boxinst_serve.serving.server import TritonServer, serve_forever

    from boxinst_serve.serving.security import Security, check_exposure
    from boxinst_serve.serving.supervisor import SupervisorSettings

    security = Security.load(args.tls_cert, args.tls_key, args.tls_client_ca, args.api_key, args.api_key_file)
    security = security if security.tls or security.api_key else None
    check_exposure(args.host, security, insecure=args.insecure, http_host=args.http_host,
                   metrics_host=args.metrics_host)
    if args.queue_per_instance is not None or args.queue_timeout_ms is not None:
        _apply_queue_flags(args)
    server = TritonServer(args.repository, host=args.host, grpc_port=args.grpc_port, http_port=args.http_port,
                          metrics_port=args.metrics_port, log_path=args.log, exit_timeout_s=args.exit_timeout,
                          http_host=args.http_host, metrics_host=args.metrics_host, security=security)
    supervise = None if args.no_supervise else SupervisorSettings(probe_s=args.probe_interval,
                                                                  max_recoveries=args.max_recoveries)
    return serve_forever(server, timeout_s=args.ready_timeout, supervise=supervise)


def _apply_queue_flags(args: argparse.Namespace) -> None:
    """Write the queue flags into the repository's configs (a flag not given keeps the repository's value)."""
    from boxinst_serve.cli.args import queue_policy
    from boxinst_serve.serving.queue import apply_queue_policy, repository_queue_policy

    policy = queue_policy(args, repository_queue_policy(args.repository))
    changed = apply_queue_policy(args.repository, policy)
    print(f"queue: {policy.per_instance} per instance, deadline {policy.timeout_ms} ms"
          f"{' (written into ' + ', '.join(changed) + ')' if changed else ''}", flush=True)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("serve", help="serve a model repository with Triton (gRPC) until Ctrl-C")
    s.add_argument("--repository", default="model_repository")
    s.add_argument("--host", default="127.0.0.1",
                   help="gRPC bind address (0.0.0.0 exposes it to the network: needs --tls-cert/--tls-key and "
                        "--api-key, or --insecure); HTTP and metrics stay on 127.0.0.1")
    free = "; 0: any free port, printed once serving (chosen again if another process takes it first)"
    s.add_argument("--grpc-port", type=int, default=8001, help="default 8001" + free)
    s.add_argument("--http-port", type=int, default=8000, help="default 8000" + free)
    s.add_argument("--metrics-port", type=int, default=8002, help="default 8002" + free)
    s.add_argument("--log", default=None, help="tritonserver log file (default: a temporary file)")
    s.add_argument("--ready-timeout", type=float, default=180.0, help="seconds to wait for the models")
    s.add_argument("--exit-timeout", type=int, default=30, help="seconds in-flight requests get at shutdown")
    add_queue_flags(s, keep=True)
    g = s.add_argument_group("security (docs/deployment.md, \"Securing a server\")")
    g.add_argument("--tls-cert", default=None, help="gRPC TLS: the server's certificate (PEM)")
    g.add_argument("--tls-key", default=None, help="gRPC TLS: the server's private key (PEM)")
    g.add_argument("--tls-client-ca", default=None, help="mutual TLS: clients must present a certificate of this CA")
    g.add_argument("--api-key", default=None,
                   help="callers must send this key (inference, shared memory, repository, configs, statistics, "
                        "trace, logging, metadata; health stays open)")
    g.add_argument("--api-key-file", default=None, help="the key from this file (keeps it out of shell history)")
    g.add_argument("--http-host", default="127.0.0.1",
                   help="HTTP bind address (no TLS in Triton 2.51: beyond loopback only with --insecure, e.g. for "
                        "an HTTP health probe from outside)")
    g.add_argument("--metrics-host", default="127.0.0.1",
                   help="metrics bind address (beyond loopback only with --insecure)")
    g.add_argument("--insecure", action="store_true",
                   help="allow --host beyond loopback without TLS and a key (a trusted network only)")
    s.add_argument("--probe-interval", type=float, default=10.0,
                   help="seconds between the supervisor's tiny inferences through each ensemble (0: none; dead "
                        "step processes are still noticed within 0.5 s)")
    s.add_argument("--max-recoveries", type=int, default=5,
                   help="recoveries (step reloads, server restarts) within 5 minutes before serve gives up and "
                        "exits 1")
    s.add_argument("--no-supervise", action="store_true",
                   help="no supervisor: a dead step stays dead (Triton 2.51 does not restart it)")
    s.set_defaults(func=cmd_serve)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    _add_serve(sub)
