"""Verbs that measure: bench (engines, a server, camera frames, video; boxinst_serve.apps.bench.run)
and info (parameters and GFLOPs of a preset)."""
from __future__ import annotations

import argparse
import json

from boxinst_serve.cli.args import add_client_security, client_security, parse_frame_sizes, parse_ints, parse_size


def cmd_bench(args: argparse.Namespace) -> int:
    """Latency of engines on the same weights and image, one run; a server's with --url, video
    throughput with --video."""
    from boxinst_serve.apps.bench import run
    from boxinst_serve.measure import print_result

    if args.url and args.input:
        # --input always compares with the same work in process, from the served repository on this machine
        repository = args.repository or "model_repository"
        out = run.bench_frames(args.url, repository, args.input, args.frames, image=args.image,
                               iters=args.iters, warmup=args.warmup, threads=args.threads, raw_model=args.raw_model,
                               client_kwargs=client_security(args))
    elif args.url and args.soak:
        out = run.bench_soak(args.url, args.soak, concurrency=max(args.concurrency), image=args.image,
                             size=args.size, client_kwargs=client_security(args))
    elif args.url:
        out = run.bench_server(args.url, args.repository, image=args.image, size=args.size,
                               concurrency=args.concurrency, duration_s=args.duration, iters=args.iters,
                               threads=args.threads, client_kwargs=client_security(args))
    elif args.video:
        if not args.checkpoint:
            raise ValueError("--video needs --checkpoint MODEL (.pt, .onnx, .xml or .plan)")
        if args.ray_workers:
            out = run.bench_video_ray(args.video, args.checkpoint, workers=args.ray_workers,
                                      batch_size=args.batch_sizes[0], repeats=args.repeats)
        else:
            out = run.bench_video(args.video, args.checkpoint, batch_sizes=args.batch_sizes, device=args.device)
    else:
        out = run.bench_engines(
            args.checkpoint, args.engines.split(",") if args.engines is not None else None, config=args.config,
            size=args.size, image=args.image, precision=args.precision, device=args.device, batch=args.batch,
            iters=args.iters, warmup=args.warmup, threads=args.threads, stages=not args.no_stages,
            score_thresh=args.score_thresh, calibration=args.calibration, calibration_images=args.calibration_images)
    print_result(out.result, out.table, args.json, out.header)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from boxinst_serve.apps.bench.run import format_model_info, model_info

    info = model_info(args.config, args.size, num_classes=args.num_classes)
    print(json.dumps(info) if args.json else format_model_info(info))
    return 0


def _add_bench(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("bench", help="end-to-end latency of the torch, onnxruntime and openvino engines")
    s.add_argument("--checkpoint", default=None, help="weights (default: a freshly initialised --config)")
    s.add_argument("--config", default="lite")
    s.add_argument("--size", type=parse_size, default=None, help="test size HxW (short side x max side)")
    s.add_argument("--image", default=None, help="image file (default: random pixels of --size)")
    s.add_argument("--engines", default=None,  # None: torch,onnxruntime for a checkpoint (apps.bench.run)
                   help="comma-separated: torch, onnxruntime, onnxruntime-int8, openvino, tensorrt (an exported "
                        "--checkpoint: its one engine; openvino also runs a .onnx)")
    s.add_argument("--calibration", default=None, metavar="DATA.json",
                   help="onnxruntime-int8: calibrate on this COCO json's images (default: on the benchmark image)")
    s.add_argument("--calibration-images", type=int, default=64, help="onnxruntime-int8: images of --calibration")
    s.add_argument("--engine", dest="engines", help="one engine (same as --engines NAME)")
    s.add_argument("--precision", default="fp32", choices=("fp32", "fp16"))
    s.add_argument("--no-stages", action="store_true", help="skip the per-stage breakdown of the torch engine")
    s.add_argument("--score-thresh", type=float, default=None,
                   help="override the config's score threshold; 0 keeps all K = max_detections candidates, "
                        "the worst case for the mask heads and pasting (fresh weights otherwise detect nothing)")
    s.add_argument("--batch", type=int, default=1)
    s.add_argument("--iters", type=int, default=20)
    s.add_argument("--warmup", type=int, default=3)
    s.add_argument("--threads", type=int, default=0, help="intra-op threads (0: the runtimes' default)")
    s.add_argument("--device", default="cpu")
    s.add_argument("--json", action="store_true")
    _add_bench_server(s)
    add_client_security(s)
    _add_bench_video(s)
    s.set_defaults(func=cmd_bench)


def _add_bench_server(s: argparse.ArgumentParser) -> None:
    s.add_argument("--url", default=None, help="load-test this server (HOST:PORT, gRPC) instead of engines")
    s.add_argument("--repository", default=None,
                   help="--url: the served repository on this machine, for the in-process baseline (its ONNX "
                        "model); optional for load, which reads what it needs from the server; --input: default "
                        "model_repository")
    s.add_argument("--concurrency", type=parse_ints, default=(1, 2, 4, 8), help="--url: clients, e.g. 1,2,4,8")
    s.add_argument("--input", default=None,
                   help="--url: camera frames by input path instead of load: png, raw, shm or several "
                        "(comma-separated); latency split into encode, transfer, queue, server compute, decode")
    s.add_argument("--soak", type=float, default=None, metavar="SECONDS",
                   help="--url: soak test instead: clients (the largest --concurrency) for SECONDS on mixed valid "
                        "and invalid inputs; failures, p50/p99 and the server's memory over time")
    s.add_argument("--raw-model", default=None,
                   help="--input raw,shm: the served model raw frames go to (default: the client's choice, "
                        "boxinst_raw_fused where the server has it, else the boxinst_raw ensemble)")
    s.add_argument("--frames", type=parse_frame_sizes, default=((480, 640), (720, 1280)),
                   help="--input: frame sizes as WIDTHxHEIGHT, comma-separated (default 640x480,1280x720); "
                        "--image resized to each, else random pixels")


def _add_bench_video(s: argparse.ArgumentParser) -> None:
    s.add_argument("--video", default=None,
                   help="video throughput on this clip: plain one-frame loop vs `boxinst video` at --batch-sizes "
                        "(model from --checkpoint: .pt, .onnx or .plan)")
    s.add_argument("--batch-sizes", type=parse_ints, default=(1, 4, 8), help="--video: batch sizes to measure")
    s.add_argument("--ray-workers", type=parse_ints, default=None,
                   help="--video SOURCE (folder, glob, list file): single-process `boxinst video` against `--ray` "
                        "with these worker counts, e.g. 1,2, on a local Ray (batch: the first of --batch-sizes)")
    s.add_argument("--repeats", type=int, default=3, help="--ray-workers: turns over the paths (medians reported)")
    s.add_argument("--duration", type=float, default=10.0, help="--url: seconds per concurrency level")


def _add_info(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("info", help="parameter count and GFLOPs of a preset")
    s.add_argument("--config", default="r50_fpn")
    s.add_argument("--size", type=parse_size, default=(800, 1344), help="input HxW (multiples of 32)")
    s.add_argument("--num-classes", type=int, default=80)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_info)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """bench, info, in the order of `boxinst --help`."""
    _add_bench(sub)
    _add_info(sub)
