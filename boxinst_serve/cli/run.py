"""Verbs that run a model on inputs: segment (images), video, annotate (boxinst_serve.apps)."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from boxinst_serve.cli.args import add_client_security, client_security


def cmd_segment(args: argparse.Namespace) -> int:
    from pathlib import Path

    from boxinst_serve.apps.segment import client_predictor, collect_images, segment_paths

    paths = collect_images(args.inputs)
    if args.coco:
        coco = json.loads(Path(args.coco).read_text())
        folder = Path(args.coco).parent / "images"
        paths += [folder / im["file_name"] for im in coco["images"]][: args.limit or None]
    if not paths:
        raise ValueError("no images given (pass files, folders or --coco JSON)")
    client, predict = _client_or_engine(args)
    try:
        predict = client_predictor(client, args.deadline_ms) if client is not None else predict
        report = segment_paths(predict, paths, args.out,
                               score_thresh=args.score_thresh, overlays=not args.no_overlays, progress=not args.quiet)
    finally:
        if client is not None:
            client.close()
    print(f"segmented {report.processed} image(s) at {report.images_per_s:.1f} images/s "
          f"({'server ' + args.url if args.url else args.model}), {report.instances} instance(s) with score >= "
          f"{args.score_thresh}; overlays and {report.results_json}")
    for path, err in report.failed:
        print(f"failed: {path}: {err}", file=sys.stderr)
    return 1 if report.failed else 0


def _client_or_engine(args: argparse.Namespace, max_workers: int | None = None):
    """(a ready BoxInstClient of --url, None) or (None, the engine of --model): exactly one is given."""
    if bool(args.model) == bool(args.url):
        raise ValueError("give exactly one of --model (in-process) or --url (a running `boxinst serve`)")
    if args.url:
        from boxinst_serve.client import BoxInstClient

        kwargs = {} if max_workers is None else {"max_workers": max_workers}
        client = BoxInstClient(args.url, timeout_s=args.timeout, **kwargs, **client_security(args))
        if not client.is_ready():
            client.close()
            raise RuntimeError(f"no ready boxinst model at {args.url} (start one with `boxinst serve`)")
        return client, None
    from boxinst_serve.engines import load_engine

    return None, load_engine(args.model, device=args.device, engine=args.engine,
                             **engine_threads(args.model, getattr(args, "threads", 0)))


def engine_threads(model: str, threads: int) -> dict:
    """load_engine's keywords for `--threads`: the intra-op threads of a .onnx model (ONNX Runtime's or
    OpenVINO's) or an OpenVINO .xml IR; none for 0 (the runtime's default) or another kind of model."""
    return {"threads": threads} if threads and str(model).lower().endswith((".onnx", ".xml")) else {}


def add_engine(s: argparse.ArgumentParser) -> None:
    """--engine: which runtime runs --model."""
    s.add_argument("--engine", default="auto", choices=("auto", "onnxruntime", "openvino"),
                   help="--model's runtime: auto (by file type: .onnx ONNX Runtime, .xml OpenVINO, .pt torch, "
                        ".plan TensorRT) or openvino for a .onnx model (the `openvino` extra)")


def cmd_video(args: argparse.Namespace) -> int:
    """Segment video files, folders, globs, list files or a camera: OUT/<video>/instances.jsonl (+ overlay.mp4);
    with --ray, on the workers of a Ray cluster."""
    from pathlib import Path

    from boxinst_serve.apps.video.pipeline import camera_index
    from boxinst_serve.files import write_json_atomic

    if bool(args.model) == bool(args.url):
        raise ValueError("give exactly one of --model (in-process) or --url (a running `boxinst serve`)")
    if args.batch_size < 1 or args.every < 1:
        raise ValueError("--batch-size and --every must be >= 1")
    camera = camera_index(args.input[0]) is not None and len(args.input) == 1
    summary_path = Path(args.summary or Path(args.out) / "summary.json")
    summary = _video_on_ray(args, camera) if args.ray is not None else _video_in_process(args)
    write_json_atomic(summary_path, summary.to_dict())
    print(summary.format(args.score_thresh) + f" ({'server ' + args.url if args.url else args.model}); "
          f"results in {args.out}, summary {summary_path}")
    for r in summary.failed:
        print(f"failed: {r.error}", file=sys.stderr)
    if summary.interrupted and not camera:  # Ctrl-C is how a camera run ends
        print("interrupted: run the same command again to continue", file=sys.stderr)
        return 130
    return 1 if summary.failed else 0


def _video_on_ray(args: argparse.Namespace, camera: bool):
    import os

    from boxinst_serve.apps.video.ray import PredictorSpec, RayConfig, run_videos_on_ray

    if camera:
        raise ValueError("--ray processes video files; a camera is read by one process (drop --ray)")
    if args.model and not os.path.exists(args.model):
        raise FileNotFoundError(f"model '{args.model}' does not exist (the workers read it from the same path: "
                                f"put it on storage every node sees)")
    if args.gpus_per_worker > 0 and args.device == "cpu" and args.model:
        logging.getLogger(__name__).warning("each worker holds %g GPU(s) but runs the model on the CPU "
                                            "(--device cuda to use them)", args.gpus_per_worker)
    spec = PredictorSpec(model=os.path.abspath(args.model) if args.model else None, url=args.url,
                         engine=args.engine, device=args.device, timeout_s=args.timeout, max_requests=args.batch_size,
                         threads=args.threads, client_kwargs=client_security(args))
    cfg = RayConfig(address=None if args.ray == "local" else args.ray, workers=args.workers,
                    gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker,
                    max_attempts=args.max_attempts, start_timeout_s=args.start_timeout)
    return run_videos_on_ray(args.input, args.out, spec, cfg, batch_size=args.batch_size, every=args.every,
                             overlay=args.overlay, score_thresh=args.score_thresh, progress=not args.quiet)


def _video_in_process(args: argparse.Namespace):
    from boxinst_serve.apps.video.pipeline import client_batch_predictor, engine_batch_predictor, process_videos

    client, engine = _client_or_engine(args, max_workers=max(args.batch_size, 1))
    predict = client_batch_predictor(client) if client is not None else engine_batch_predictor(engine)
    try:
        return process_videos(args.input, args.out, predict, batch_size=args.batch_size, every=args.every,
                              overlay=args.overlay, score_thresh=args.score_thresh, progress=not args.quiet)
    finally:
        if client is not None:
            client.close()


def cmd_annotate(args: argparse.Namespace) -> int:
    """Pseudo-label masks for the ground-truth boxes of a COCO json (BoxInst's auto-labelling use)."""
    from boxinst_serve.apps.annotate import annotate, mask_iou_report

    report = annotate(args.model, args.data, args.images, args.out, device=args.device,
                      iou_thresh=args.iou_thresh, progress=not args.quiet)
    print(f"wrote {args.out}: {report.annotations} annotation(s) in {report.images} image(s): "
          f"{report.from_detections} from matching detections, {report.from_locations} from the best location "
          f"in the box, {report.filled_boxes} filled-box fallback(s) (empty masks)")
    if not args.report:
        return 0
    iou = mask_iou_report(args.out, args.data, report.detections, iou_thresh=args.iou_thresh)
    if iou["objects"] == 0:
        print("--report: the input json has no true segmentations to compare with", file=sys.stderr)
    else:
        print(f"mask IoU against the true masks over {iou['objects']} object(s): pseudo-labels "
              f"{iou['pseudo_label_miou']:.3f}, plain detector {iou['detector_miou']:.3f} "
              f"({iou['detector_matched']} matched a detection with box IoU >= {args.iou_thresh}; "
              f"unmatched count as 0)")
    return 0


def _add_segment(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("segment", help="segment images or folders: overlays + COCO results json")
    s.add_argument("inputs", nargs="*", help="image files or folders")
    s.add_argument("--model", default=None,
                   help="checkpoint (.pt), ONNX model (.onnx), OpenVINO IR (.xml) or TensorRT plan (.plan)")
    add_engine(s)
    s.add_argument("--url", default=None, help="segment through a running `boxinst serve` (HOST:PORT) instead")
    s.add_argument("--timeout", type=float, default=30.0, help="--url: seconds per request")
    s.add_argument("--deadline-ms", type=float, default=None,
                   help="--url: each image's deadline: the server drops it from its queue past it and the image "
                        "fails at once (default: --timeout only)")
    add_client_security(s)
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--coco", default=None, help="also segment the images listed in this COCO json")
    s.add_argument("--limit", type=int, default=0, help="at most this many images from --coco")
    s.add_argument("--score-thresh", type=float, default=0.3, help="drawn/counted instances")
    s.add_argument("--no-overlays", action="store_true")
    s.add_argument("--device", default="cpu")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_segment)


def _add_video(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("video", help="segment videos (files, folders, globs, list files, camera index): jsonl per "
                                     "frame, overlay; --ray: on a Ray cluster")
    s.add_argument("input", nargs="+", help="video files, folders of videos, globs ('clips/**/*.mp4'), list files "
                                            "(.txt: one per line), or one camera index such as 0")
    s.add_argument("--out", required=True, help="output folder (one sub-folder per video)")
    s.add_argument("--model", default=None,
                   help="checkpoint (.pt), ONNX model (.onnx), OpenVINO IR (.xml) or TensorRT plan (.plan)")
    add_engine(s)
    s.add_argument("--url", default=None, help="segment through a running `boxinst serve` (HOST:PORT) instead")
    s.add_argument("--timeout", type=float, default=30.0, help="--url: seconds per request")
    add_client_security(s)
    s.add_argument("--batch-size", type=int, default=8, help="frames per engine call (--url: sent concurrently)")
    s.add_argument("--every", type=int, default=1, help="process frames 0, N, 2N, ...")
    s.add_argument("--overlay", action="store_true", help="also write overlay.mp4 with the masks drawn")
    s.add_argument("--score-thresh", type=float, default=0.3, help="drawn/counted instances")
    s.add_argument("--device", default="cpu")
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--summary", default=None, help="run summary JSON (default: OUT/summary.json)")
    s.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="process the videos on Ray workers: no ADDRESS starts a local Ray; 'auto', HOST:PORT or "
                        "ray://HOST:10001 joins a cluster (inputs, model and OUT on storage every node sees)")
    s.add_argument("--workers", type=int, default=1, help="--ray: worker actors (each loads the model once)")
    s.add_argument("--gpus-per-worker", type=float, default=0.0, help="--ray: GPUs per worker (fractions share one)")
    s.add_argument("--threads", type=int, default=0,
                   help="a .onnx model's ONNX Runtime intra-op threads (OpenVINO's for --engine openvino or a .xml "
                        "model), in this process or in each --ray worker (default 0: the runtime's default, one per "
                        "core of the node; so --ray workers run the model as the single process does, and on one "
                        "node their outputs equal its byte for byte)")
    s.add_argument("--cpus-per-worker", type=float, default=1.0,
                   help="--ray: CPUs Ray reserves per worker (for its decoder and writer threads; a .pt model's "
                        "torch threads follow it, a .onnx model's are --threads)")
    s.add_argument("--max-attempts", type=int, default=3,
                   help="--ray: worker deaths on one video before it is reported as failed")
    s.add_argument("--start-timeout", type=float, default=600.0,
                   help="--ray: seconds for all workers to be up, and for a worker to come back after it died")
    s.set_defaults(func=cmd_video)


def _add_annotate(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("annotate", help="pseudo-label masks for the boxes of a COCO json (auto-labelling)")
    s.add_argument("--data", required=True, help="COCO json with boxes")
    s.add_argument("--images", default=None, help="image folder (default: images/ beside the json)")
    s.add_argument("--model", required=True, help="checkpoint (.pt)")
    s.add_argument("--out", required=True, help="COCO json written with segmentation (RLE) and area added")
    s.add_argument("--iou-thresh", type=float, default=0.5, help="box IoU for using a detection's mask")
    s.add_argument("--report", action="store_true",
                   help="mean mask IoU against the input's true masks, pseudo-labels vs the plain detector")
    s.add_argument("--device", default="cpu")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_annotate)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """segment, video, annotate, in the order of `boxinst --help`."""
    _add_segment(sub)
    _add_video(sub)
    _add_annotate(sub)

