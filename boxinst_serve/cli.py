"""The `boxinst` command: one entry point with verbs. Heavy modules (torch, training, export) are
imported inside each verb so that `boxinst --help` and the light client stay fast."""
from __future__ import annotations

import argparse
import json
import logging
import sys


def _size(text: str) -> tuple[int, int]:
    """'512' -> (512, 512); '800x1333' -> (800, 1333) as H x W."""
    parts = text.lower().split("x")
    try:
        if len(parts) == 1:
            return int(parts[0]), int(parts[0])
        if len(parts) == 2:
            return int(parts[0]), int(parts[1])
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"size must be N or HxW, got {text!r}")


def _range(text: str) -> tuple[int, int]:
    """'15' -> (15, 15); '1-6' -> (1, 6)."""
    try:
        lo, _, hi = text.partition("-")
        bounds = (int(lo), int(hi or lo))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or MIN-MAX, got {text!r}") from None
    if not 1 <= bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"expected 1 <= MIN <= MAX, got {text!r}")
    return bounds


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def cmd_make_shapes(args: argparse.Namespace) -> int:
    from training.shapes import make_shapes

    info = make_shapes(args.out, args.num_images, seed=args.seed, size=args.size, val_fraction=args.val_fraction,
                       objects=args.objects)
    print(f"wrote {info['num_train']} train and {info['num_val']} val images: {info['train']}, {info['val']}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from boxinst_serve.config import preset
    from training.config import LossConfig, TrainConfig
    from training.trainer import resolve_device, train

    loss = LossConfig(supervision=args.supervision, box_loss=args.box_loss,
                      pairwise_color_thresh=args.tau, topk_proposals_per_image=args.topk_proposals,
                      mask_classes=tuple(c for c in (args.mask_classes or "").split(",") if c),
                      hole_loss_weight=args.hole_loss)
    if args.init:  # the architecture comes from the checkpoint (its preset may be another's, e.g. AdelaiDet's)
        from boxinst_serve.checkpoint import load_checkpoint

        model_cfg = load_checkpoint(args.init)["model_config"]
        if args.config and args.config != model_cfg.name:
            raise ValueError(f"--config {args.config}, but --init '{args.init}' is a {model_cfg.name} model: the "
                             "architecture comes from --init, so leave --config out")
    else:
        model_cfg = preset(args.config or "r50_fpn")
    # The test size follows the training sizes the user gave (the paper tests at its largest
    # training short side); the training sizes of the preset's recipe derive from the test size.
    min_size_test = args.min_size_test or (max(args.min_sizes) if args.min_sizes else None)
    max_size_test = args.max_size_test or args.max_size
    if min_size_test:
        model_cfg = model_cfg.replace(min_size_test=min_size_test)
    if max_size_test:
        model_cfg = model_cfg.replace(max_size_test=max_size_test)
    given = {"batch_size": args.batch_size, "min_sizes": args.min_sizes, "max_size": args.max_size,
             "num_workers": args.workers, "checkpoint_period": args.checkpoint_period,
             "warmup_iters": args.warmup_iters, "log_period": args.log_period}
    overrides = {k: v for k, v in given.items() if v is not None}
    if args.lr is not None:
        overrides["lr"] = args.lr
    overrides.update(seed=args.seed, clip_grad_norm=args.clip_grad, amp=not args.no_amp)
    device = resolve_device(args.device)
    train_cfg = TrainConfig.for_model(model_cfg.name, model_cfg.min_size_test, model_cfg.max_size_test, device.type,
                                      args.iters, loss=loss, **overrides)
    if args.pairwise_warmup_iters is not None:
        train_cfg.loss.pairwise_warmup_iters = args.pairwise_warmup_iters
    resume = args.resume or (args.resume_if_exists and (Path(args.out) / "last.pt").exists())
    final = train(model_cfg, train_cfg, args.data, args.out, images_dir=args.images, resume=resume,
                  device=str(device), pretrained_backbone=args.pretrained_backbone, init_checkpoint=args.init,
                  progress=not args.quiet, max_memory_gb=args.max_memory, reset_classes=args.reset_classes)
    print(f"checkpoint: {final}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate, format_table

    report = evaluate(args.checkpoint, args.data, args.images, args.json, device=args.device,
                      progress=not args.quiet)
    print(format_table(report))
    if args.json:
        print(f"metrics and predictions: {args.json}")
    return 0


def cmd_import_weights(args: argparse.Namespace) -> int:
    """An AdelaiDet BoxInst/CondInst checkpoint -> this project's checkpoint, used as is by every verb."""
    from training.adelaidet import import_adelaidet, load_class_names

    names = load_class_names(args.class_names) if args.class_names else None
    report = import_adelaidet(args.source, args.out, class_names=names)
    cfg = report.config
    print(f"imported {report.describe()} -> {args.out}")
    print(f"  model {cfg.name}: test size {cfg.min_size_test}/{cfg.max_size_test}, AdelaiDet's input convention "
          f"(mean padding, detectron2 resize, NMS on unclipped boxes); use it with eval, segment, export, serve, "
          f"video, bench or `train --init {args.out}`")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from boxinst_serve.config import preset
    from boxinst_serve.model import build_model
    cfg = preset(args.config, num_classes=args.num_classes)
    model = build_model(cfg).eval()
    params = sum(p.numel() for p in model.parameters())
    h, w = args.size
    x = torch.zeros(1, h, w, 3, dtype=torch.uint8)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    flops = counter.get_total_flops()
    info = {"config": cfg.name, "parameters": params, "input": [h, w], "gflops": flops / 1e9,
            "controller_params": cfg.num_controller_params}
    if args.json:
        print(json.dumps(info))
    else:
        print(f"{cfg.name}: {params / 1e6:.2f} M parameters, {flops / 1e9:.1f} GFLOPs at {h}x{w} "
              f"(network without post-processing; 1 multiply-add = 2 FLOPs), "
              f"controller outputs {cfg.num_controller_params} parameters per instance")
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    from pathlib import Path

    from boxinst_serve.engines import load_engine
    from boxinst_serve.segment import collect_images, segment_paths

    paths = collect_images(args.inputs)
    if args.coco:
        coco = json.loads(Path(args.coco).read_text())
        folder = Path(args.coco).parent / "images"
        paths += [folder / im["file_name"] for im in coco["images"]][: args.limit or None]
    if not paths:
        raise ValueError("no images given (pass files, folders or --coco JSON)")
    if bool(args.model) == bool(args.url):
        raise ValueError("give exactly one of --model (in-process) or --url (a running `boxinst serve`)")
    client = None
    if args.url:
        from boxinst_serve.client import BoxInstClient
        from boxinst_serve.segment import client_predictor

        client = BoxInstClient(args.url, timeout_s=args.timeout)
        if not client.is_ready():
            raise RuntimeError(f"no ready boxinst model at {args.url} (start one with `boxinst serve`)")
        predict = client_predictor(client)
    else:
        predict = load_engine(args.model, device=args.device)
    try:
        report = segment_paths(predict, paths, args.out, score_thresh=args.score_thresh,
                               overlays=not args.no_overlays, progress=not args.quiet)
    finally:
        if client is not None:
            client.close()
    print(f"segmented {report.processed} image(s) at {report.images_per_s:.1f} images/s "
          f"({'server ' + args.url if args.url else args.model}), {report.instances} instance(s) with score >= "
          f"{args.score_thresh}; overlays and {report.results_json}")
    for path, err in report.failed:
        print(f"failed: {path}: {err}", file=sys.stderr)
    return 1 if report.failed else 0


def cmd_export(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="boxinst-export-") as tmp:
        if args.test_size:  # the serving size travels in the config (ONNX metadata, the Triton steps)
            from boxinst_serve.checkpoint import load_checkpoint, save_atomic

            ckpt = load_checkpoint(args.checkpoint)
            cfg = ckpt["model_config"].replace(min_size_test=min(args.test_size), max_size_test=max(args.test_size))
            args.checkpoint = str(Path(tmp) / "resized.pt")
            save_atomic({"model": ckpt["model"], "model_config": cfg.to_dict()}, args.checkpoint)
        return _export(args)


def _int8_options(args: argparse.Namespace):
    """export.quantize.Int8Options from the --int8 flags, or None without --int8."""
    calibration_flags = (args.calibration, args.calibration_cache)
    if not args.int8:
        if any(calibration_flags):
            raise ValueError("--calibration/--calibration-cache only apply with --int8")
        return None
    from export.quantize import DEFAULT_EXCLUDE, DEFAULT_METHOD, Int8Options

    tensorrt = args.flavour == "tensorrt" if args.triton else args.format == "tensorrt"
    if not args.calibration and not (tensorrt and args.calibration_cache):
        raise ValueError("--int8 needs --calibration DATA.json: a COCO json whose images calibrate the INT8 ranges"
                         + (" (or an existing --calibration-cache)" if tensorrt else ""))
    if args.int8_float is None:
        exclude = DEFAULT_EXCLUDE
    else:
        exclude = () if args.int8_float == "none" else tuple(g for g in args.int8_float.split(",") if g)
    return Int8Options(args.calibration, num_images=args.calibration_images,
                       method=args.calibration_method or DEFAULT_METHOD, exclude=exclude,
                       images_dir=args.calibration_image_dir, cache=args.calibration_cache,
                       reduce_range={"auto": None, "on": True, "off": False}[args.int8_reduce_range])


def _export(args: argparse.Namespace) -> int:
    from pathlib import Path

    int8 = _int8_options(args)
    if args.triton:
        from export.triton import write_triton_net

        net = write_triton_net(args.checkpoint, args.triton, flavour=args.flavour, onnx_path=args.onnx,
                               max_batch_size=args.max_batch, instances=args.instances,
                               trt_accelerator=args.trt_accelerator, fp16=args.fp16, max_pixels=args.max_pixels,
                               int8=int8)
        print(f"Triton model {net} ({args.flavour}{', INT8' if int8 else ''}); serve it with "
              f"`boxinst serve --repository {args.triton}`")
        return 0
    if not args.out:
        raise ValueError("give --out FOLDER (or --triton REPOSITORY)")
    out = Path(args.out)
    if args.format == "onnx":
        from export.onnx import export_onnx

        path = export_onnx(args.checkpoint, out, max_detections=args.max_detections, opset=args.opset)
        print(f"ONNX model: {path}")
        if int8:
            from export.quantize import quantize_exported

            q = quantize_exported(path, int8, out / "model_int8.onnx")
            print(f"INT8 ONNX model: {q} ({int8.method} calibration on {args.calibration}; float: "
                  f"{', '.join(int8.exclude) or 'only non-convolution ops'})")
        return 0
    from export.tensorrt import build_engine, require_tensorrt

    require_tensorrt()  # before any export work: the clear error first
    onnx_path = Path(args.onnx) if args.onnx else out / "model.onnx"
    if not onnx_path.exists():
        from export.onnx import export_onnx

        onnx_path = export_onnx(args.checkpoint, out, max_detections=args.max_detections, opset=args.opset)
    from boxinst_serve.config import ModelConfig
    from export.onnx import read_metadata
    from export.tensorrt import serving_profile

    cfg = ModelConfig.from_json(read_metadata(onnx_path)["model_config"])
    profile = serving_profile(cfg, args.max_batch)  # every image as prepare_for pads it
    min_shape, opt_shape, max_shape = (args.min_shape or profile[0][1:], args.opt_shape or profile[1][1:],
                                       args.max_shape or profile[2][1:])
    calibration = None
    if int8 is not None and int8.calibration:
        from export.calibration import CalibrationImages

        calibration = CalibrationImages.from_coco(int8.calibration, cfg, int8.num_images, int8.images_dir,
                                                  batch_size=args.opt_batch, same_shape=True, drop_last=True)
    plan = build_engine(onnx_path, (1, *min_shape), (args.opt_batch, *opt_shape),
                        (args.max_batch, *max_shape), fp16=args.fp16, workspace_gib=args.workspace_gib,
                        int8=int8 is not None, calibration=calibration,
                        calibration_cache=int8.cache if int8 is not None else None,
                        int8_exclude=int8.exclude if int8 is not None else None)
    print(f"TensorRT plan: {plan}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from boxinst_serve.tritonserver import TritonServer, serve_forever

    server = TritonServer(args.repository, host=args.host, grpc_port=args.grpc_port, http_port=args.http_port,
                          metrics_port=args.metrics_port, log_path=args.log, exit_timeout_s=args.exit_timeout)
    return serve_forever(server, timeout_s=args.ready_timeout)


def cmd_video(args: argparse.Namespace) -> int:
    """Segment video files, folders, globs, list files or a camera: OUT/<video>/instances.jsonl (+ overlay.mp4);
    with --ray, on the workers of a Ray cluster."""
    from pathlib import Path

    from boxinst_serve.files import write_json_atomic
    from boxinst_serve.video import camera_index

    if bool(args.model) == bool(args.url):
        raise ValueError("give exactly one of --model (in-process) or --url (a running `boxinst serve`)")
    if args.batch_size < 1 or args.every < 1:
        raise ValueError("--batch-size and --every must be >= 1")
    camera = camera_index(args.input[0]) is not None and len(args.input) == 1
    summary_path = Path(args.summary or Path(args.out) / "summary.json")
    if args.ray is not None:
        summary = _video_on_ray(args, camera)
    else:
        summary = _video_in_process(args)
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

    from boxinst_serve.video_ray import PredictorSpec, RayConfig, run_videos_on_ray

    if camera:
        raise ValueError("--ray processes video files; a camera is read by one process (drop --ray)")
    if args.model and not os.path.exists(args.model):
        raise FileNotFoundError(f"model '{args.model}' does not exist (the workers read it from the same path: "
                                f"put it on storage every node sees)")
    if args.gpus_per_worker > 0 and args.device == "cpu" and args.model:
        logging.getLogger(__name__).warning("each worker holds %g GPU(s) but runs the model on the CPU "
                                            "(--device cuda to use them)", args.gpus_per_worker)
    spec = PredictorSpec(model=os.path.abspath(args.model) if args.model else None, url=args.url,
                         device=args.device, timeout_s=args.timeout, max_requests=args.batch_size,
                         threads=max(1, int(args.cpus_per_worker)))
    cfg = RayConfig(address=None if args.ray == "local" else args.ray, workers=args.workers,
                    gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker,
                    max_attempts=args.max_attempts, start_timeout_s=args.start_timeout)
    return run_videos_on_ray(args.input, args.out, spec, cfg, batch_size=args.batch_size, every=args.every,
                             overlay=args.overlay, score_thresh=args.score_thresh, progress=not args.quiet)


def _video_in_process(args: argparse.Namespace):
    from boxinst_serve.video import client_batch_predictor, engine_batch_predictor, process_videos

    client = None
    if args.url:
        from boxinst_serve.client import BoxInstClient

        client = BoxInstClient(args.url, timeout_s=args.timeout, max_workers=max(args.batch_size, 1))
        if not client.is_ready():
            raise RuntimeError(f"no ready boxinst model at {args.url} (start one with `boxinst serve`)")
        predict = client_batch_predictor(client)
    else:
        from boxinst_serve.engines import load_engine

        predict = engine_batch_predictor(load_engine(args.model, device=args.device))
    try:
        return process_videos(args.input, args.out, predict, batch_size=args.batch_size, every=args.every,
                              overlay=args.overlay, score_thresh=args.score_thresh, progress=not args.quiet)
    finally:
        if client is not None:
            client.close()


def cmd_annotate(args: argparse.Namespace) -> int:
    """Pseudo-label masks for the ground-truth boxes of a COCO json (BoxInst's auto-labelling use)."""
    from boxinst_serve.annotate import annotate, mask_iou_report

    report = annotate(args.model, args.data, args.images, args.out, device=args.device,
                      iou_thresh=args.iou_thresh, progress=not args.quiet)
    print(f"wrote {args.out}: {report.annotations} annotation(s) in {report.images} image(s): "
          f"{report.from_detections} from matching detections, {report.from_locations} from the best location "
          f"in the box, {report.filled_boxes} filled-box fallback(s) (empty masks)")
    if args.report:
        iou = mask_iou_report(args.out, args.data, report.detections, iou_thresh=args.iou_thresh)
        if iou["objects"] == 0:
            print("--report: the input json has no true segmentations to compare with", file=sys.stderr)
        else:
            print(f"mask IoU against the true masks over {iou['objects']} object(s): pseudo-labels "
                  f"{iou['pseudo_label_miou']:.3f}, plain detector {iou['detector_miou']:.3f} "
                  f"({iou['detector_matched']} matched a detection with box IoU >= {args.iou_thresh}; "
                  f"unmatched count as 0)")
    return 0


def _frame_sizes(text: str) -> tuple[tuple[int, int], ...]:
    """'640x480,1280x720' (WIDTHxHEIGHT, as cameras say it) -> ((480, 640), (720, 1280)) as (h, w)."""
    sizes = []
    for item in (t for t in text.split(",") if t):
        w, h = _size(item)
        sizes.append((h, w))
    return tuple(sizes)


def cmd_bench_frames(args: argparse.Namespace) -> int:
    """Camera frames through a running server by input path: latency and where it goes, against the
    in-process latency of the same work in the same run (boxinst_serve.bench_frames)."""
    from boxinst_serve.bench import machine_description
    from boxinst_serve.bench_frames import (INPUTS, format_budget, frame_of, in_process_runner, measure_budget,
                                            served_engine_settings)

    modes = [m for m in args.input.split(",") if m]
    bad = [m for m in modes if m not in INPUTS]
    if bad or not modes:
        raise ValueError(f"--input takes one or more of {', '.join(INPUTS)} (comma-separated), got {args.input!r}")
    settings = served_engine_settings(args.url)  # the in-process run uses the served engine's settings
    in_process = in_process_runner(args.repository, threads=args.threads or settings["threads"],
                                   spinning=settings["spinning"])
    rows = []
    for hw in args.frames:
        frame = frame_of(hw, args.image)
        for mode in modes:
            rows.append(measure_budget(args.url, frame, mode, in_process, iters=args.iters, warmup=args.warmup,
                                       raw_model=args.raw_model))
    if args.json:
        print(json.dumps({"machine": machine_description(), "url": args.url, "engine": settings,
                          "rows": [r.to_dict() for r in rows]}))
    else:
        print(f"machine: {machine_description()}; server {args.url}; repository {args.repository}; "
              f"{args.iters} requests per row at concurrency 1, alternating with in-process runs "
              f"(ONNX Runtime threads {args.threads or settings['threads'] or 'default'}, "
              f"spinning {'on' if settings['spinning'] else 'off'}, as served)")
        print(format_budget(rows))
    return 0


def cmd_bench_server(args: argparse.Namespace) -> int:
    """Load on a running server per concurrency, against the in-process latency of the same work."""
    if args.input:
        return cmd_bench_frames(args)
    from pathlib import Path

    import numpy as np

    from boxinst_serve.bench import machine_description
    from boxinst_serve.bench_server import format_load, measure_in_process, measure_load
    from boxinst_serve.client import BoxInstClient

    if args.image:
        data = Path(args.image).read_bytes()
    else:
        import cv2

        h, w = args.size or (480, 640)
        rgb = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
        data = cv2.imencode(".png", rgb)[1].tobytes()
    with BoxInstClient(args.url, timeout_s=60) as c:
        if not c.is_ready():
            raise RuntimeError(f"no ready boxinst model at {args.url} (start it with `boxinst serve`)")
        c.segment(data)
    from boxinst_serve.bench_frames import served_engine_settings

    settings = served_engine_settings(args.url)  # the in-process baseline runs ONNX Runtime as served
    in_process = measure_in_process(args.repository, data, iters=args.iters,
                                    threads=args.threads or settings["threads"], spinning=settings["spinning"])
    reports = [measure_load(args.url, data, k, args.duration) for k in args.concurrency]
    if args.json:
        print(json.dumps({"machine": machine_description(), "url": args.url, "in_process": in_process,
                          "load": [r.to_dict() for r in reports]}))
    else:
        print(f"machine: {machine_description()}; server {args.url}; repository {args.repository}")
        print(format_load(reports, in_process))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Latency of the PyTorch and ONNX Runtime engines on the same weights and image, one run."""
    if args.url:
        return cmd_bench_server(args)
    if args.video and args.ray_workers:
        from boxinst_serve.bench import machine_description
        from boxinst_serve.bench_video_ray import format_video_ray, measure_video_ray

        if not args.checkpoint:
            raise ValueError("--video needs --checkpoint MODEL (.pt, .onnx or .plan)")
        result = measure_video_ray(args.video, args.checkpoint, workers=args.ray_workers,
                                   batch_size=args.batch_sizes[0], repeats=args.repeats)
        result["machine"] = machine_description()
        print(json.dumps(result) if args.json else f"machine: {result['machine']}\n{format_video_ray(result)}")
        return 0
    if args.video:
        from boxinst_serve.bench import machine_description
        from boxinst_serve.bench_video import format_video, measure_video
        from boxinst_serve.engines import load_engine

        if not args.checkpoint:
            raise ValueError("--video needs --checkpoint MODEL (.pt, .onnx or .plan)")
        result = measure_video(args.video, load_engine(args.checkpoint, device=args.device),
                               batch_sizes=args.batch_sizes)
        result["machine"] = machine_description()
        print(json.dumps(result) if args.json else f"machine: {result['machine']}\n{format_video(result)}")
        return 0
    import tempfile
    from pathlib import Path

    import numpy as np
    import torch

    from boxinst_serve.bench import (PAPER_LINE, dense_flops_per_s, format_reports, machine_description, measure,
                                     network_flops, staged_latency)
    from boxinst_serve.checkpoint import save_atomic
    from boxinst_serve.config import preset
    from boxinst_serve.engines import load_engine
    from boxinst_serve.model import build_model
    from boxinst_serve.preprocess import read_image

    if args.threads:
        torch.set_num_threads(args.threads)
    h, w = args.size
    with tempfile.TemporaryDirectory(prefix="boxinst-bench-") as tmp:  # exports and resized weights
        work = Path(tmp)
        checkpoint = args.checkpoint
        overrides = {} if args.score_thresh is None else {"score_thresh": args.score_thresh}
        if checkpoint is None:  # speed does not depend on the weights: a freshly initialised preset
            cfg = preset(args.config).replace(min_size_test=min(h, w), max_size_test=max(h, w), **overrides)
            torch.manual_seed(0)
            checkpoint = work / f"{cfg.name}.pt"
            save_atomic({"model": build_model(cfg).state_dict(), "model_config": cfg.to_dict()}, checkpoint)
        elif args.size_given or overrides:
            from boxinst_serve.checkpoint import load_checkpoint

            ckpt = load_checkpoint(checkpoint)
            cfg = ckpt["model_config"]
            if args.size_given:
                cfg = cfg.replace(min_size_test=min(h, w), max_size_test=max(h, w))
            cfg = cfg.replace(**overrides)
            checkpoint = work / "resized.pt"
            save_atomic({"model": ckpt["model"], "model_config": cfg.to_dict()}, checkpoint)
        image = read_image(args.image) if args.image else \
            np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
        if args.precision == "fp16" and not args.device.startswith("cuda"):
            raise ValueError("--precision fp16 needs --device cuda (CPUs run fp32)")
        reports = []
        fp32_onnx: list = []  # the fp32 export, made once for onnxruntime and onnxruntime-int8

        def exported_onnx():
            from export.onnx import export_onnx

            if not fp32_onnx:
                fp32_onnx.append(export_onnx(checkpoint, work / "onnx"))
            return fp32_onnx[0]

        for name in args.engines.split(","):
            if name == "torch":
                engine = load_engine(checkpoint, device=args.device)
                if args.precision == "fp16":
                    engine.net.half()
            elif name == "onnxruntime":
                if args.precision == "fp16":
                    raise ValueError("the onnxruntime engine runs the fp32 graph: use torch or tensorrt for fp16")
                engine = load_engine(exported_onnx(), device=args.device, threads=args.threads)
            elif name == "onnxruntime-int8":
                from export.quantize import Int8Options, quantize_exported, quantize_onnx

                if args.precision == "fp16":
                    raise ValueError("onnxruntime-int8 runs the INT8 graph: --precision applies to torch/tensorrt")
                int8_path = work / "onnx" / "model_int8.onnx"
                if args.calibration:
                    quantize_exported(exported_onnx(), Int8Options(args.calibration, args.calibration_images),
                                      int8_path)
                else:  # speed does not depend on the ranges: min-max ranges of the benchmark image itself
                    from boxinst_serve.preprocess import prepare_for

                    batch, _ = prepare_for(load_engine(exported_onnx()).config, [image])
                    quantize_onnx(exported_onnx(), [batch], int8_path, method="minmax",
                                  calibration_info={"data": "the benchmark image"})
                engine = load_engine(int8_path, device=args.device, threads=args.threads)
            elif name == "tensorrt":
                from export.onnx import export_onnx
                from export.tensorrt import build_engine

                from boxinst_serve.config import padded_size

                onnx_path = export_onnx(checkpoint, work / "onnx")
                hw = (padded_size(min(h, w), 32), padded_size(max(h, w), 32))
                plan = build_engine(onnx_path, (1, *hw), (args.batch, *hw), (args.batch, *hw),
                                    fp16=args.precision == "fp16")
                engine = load_engine(plan)
            else:
                raise ValueError(f"unknown engine {name!r}: use torch, onnxruntime, onnxruntime-int8, tensorrt")
            report = measure(engine, name, image, batch=args.batch, iters=args.iters, warmup=args.warmup)
            if name == "torch" and not args.no_stages:
                report.stages_ms = staged_latency(engine.net.model, image, batch=args.batch,
                                                  iters=max(3, args.iters // 2), warmup=1, device=args.device)
            reports.append(report)
        # FLOPs of the network at the measured input size (weights do not matter), and the
        # machine's dense throughput now, in the same run.
        from boxinst_serve.checkpoint import load_model

        hp, wp = reports[0].input_hw
        flops = network_flops(load_model(checkpoint, "cpu"), torch.zeros(args.batch, hp, wp, 3, dtype=torch.uint8))
        dense = dense_flops_per_s(args.device, torch.float16 if args.precision == "fp16" else torch.float32)
        for r in reports:
            r.gflops = flops / 1e9
            r.efficiency = (flops / (r.p50_ms / 1000.0)) / dense
    summary = {"machine": machine_description(), "device": args.device, "precision": args.precision,
               "torch_threads": torch.get_num_threads(), "dense_gflops_per_s": dense / 1e9,
               "paper": PAPER_LINE, "reports": [r.to_dict() for r in reports]}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"machine: {machine_description()}; device {args.device}, {args.precision}; "
              f"torch threads {torch.get_num_threads()}")
        print(f"dense {'fp16' if args.precision == 'fp16' else 'fp32'} matrix product, measured now: "
              f"{dense / 1e9:.1f} GFLOP/s; network: {flops / 1e9:.1f} GFLOPs per batch of {args.batch}")
        print(format_reports(reports))
        if len(reports) == 2:
            print(f"{reports[1].engine} / {reports[0].engine} p50 latency: {reports[1].p50_ms / reports[0].p50_ms:.2f}")
        print(PAPER_LINE)
    return 0


def _add_make_shapes(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("make-shapes", help="write the synthetic shapes set (COCO json + PNGs)")
    s.add_argument("out")
    s.add_argument("--num-images", type=int, default=500)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=int, default=320, help="image side in pixels")
    s.add_argument("--val-fraction", type=float, default=0.2)
    s.add_argument("--objects", type=_range, default=(1, 6), metavar="N|MIN-MAX",
                   help="shapes attempted per image (default 1-6; above 6 they are drawn smaller to fit)")
    s.set_defaults(func=cmd_make_shapes)


def _add_train(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("train", help="train BoxInst from a COCO json")
    s.add_argument("--data", required=True, help="COCO json with boxes (segmentations optional)")
    s.add_argument("--images", default=None, help="image folder (default: images/ beside the json)")
    s.add_argument("--config", default=None,
                   help="model preset: r50_fpn (default), r101_fpn, lite; with --init, the checkpoint's")
    s.add_argument("--iters", type=int, default=90000)
    s.add_argument("--out", required=True, help="run folder: checkpoints, metrics.jsonl, config.json")
    s.add_argument("--batch-size", type=int, default=None,
                   help="images per iteration, all processes together (default: the preset's on this device: "
                        "lite 4 on a CPU, the paper's 16 for r50_fpn/r101_fpn on CUDA; training/config.py RECIPES)")
    s.add_argument("--lr", type=float, default=None,
                   help="learning rate (default: the paper's 0.01 at batch 16, scaled linearly with --batch-size: "
                        "0.0025 for lite's CPU batch of 4; training/config.py linear_lr)")
    s.add_argument("--warmup-iters", type=int, default=None, help="default: 1000 scaled to --iters/90000")
    s.add_argument("--pairwise-warmup-iters", type=int, default=None,
                   help="default: 10000 scaled to --iters/90000")
    s.add_argument("--supervision", default="box", choices=("box", "mask", "mixed"))
    s.add_argument("--box-loss", default="boxinst", choices=("boxinst", "projection", "filled_box", "none"),
                   help="loss for instances without masks (ablations: projection only, filled box; "
                        "none: detection losses only)")
    s.add_argument("--tau", type=float, default=0.3, help="pairwise colour-similarity threshold")
    s.add_argument("--mask-classes", default=None, metavar="A,B,...",
                   help="--supervision mixed: read the masks of these classes only; the others train from boxes "
                        "(the paper's semi-supervised setting)")
    s.add_argument("--hole-loss", type=float, default=0.0, metavar="WEIGHT",
                   help="opt-in loss giving background seen through an object's hole a signal from boxes alone "
                        "(training/hole_loss.py; from a third of the schedule on; measured recipe: 1.0; 0: off, the "
                        "paper's BoxInst)")
    s.add_argument("--topk-proposals", type=int, default=64, help="mask-loss instances per image")
    s.add_argument("--min-sizes", type=_ints, default=None,
                   help="training short sides, e.g. 640,672,704 (default: the test short side and the 32-px "
                        "steps below it, 3 for lite, 6 for r50_fpn/r101_fpn as in the paper)")
    s.add_argument("--max-size", type=int, default=None, help="training long-side cap (default: --max-size-test)")
    s.add_argument("--min-size-test", type=int, default=None,
                   help="test short side saved in the model (default: the largest --min-sizes, else the "
                        "preset's: lite 256, r50_fpn/r101_fpn 800)")
    s.add_argument("--max-size-test", type=int, default=None,
                   help="test long-side cap (default: --max-size, else the preset's: lite 448, others 1333)")
    s.add_argument("--max-memory", type=float, default=None, metavar="GB",
                   help="refuse to start when a step's estimated peak memory exceeds this (default: what the "
                        "machine has available)")
    s.add_argument("--clip-grad", type=float, default=0.0, help="gradient-norm clip (0: off)")
    s.add_argument("--checkpoint-period", type=int, default=None)
    s.add_argument("--log-period", type=int, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=None,
                   help="data-loading processes (default: 1 on a CPU, 4 on CUDA)")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda")
    s.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    s.add_argument("--pretrained-backbone", default=None, help="torchvision ResNet state-dict file")
    s.add_argument("--init", default=None, metavar="CKPT",
                   help="start from the weights and architecture of a checkpoint (another run's, or one of "
                        "`boxinst import-weights`) with a fresh schedule; for data with other classes the "
                        "classification layer is re-initialised, and the log says so")
    s.add_argument("--reset-classes", action="store_true",
                   help="with --init: re-initialise the classification layer even when the class count is the same")
    s.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    s.add_argument("--resume-if-exists", action="store_true", help="resume when OUT/last.pt exists, else start")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_train)


def _add_import_weights(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("import-weights", help="import an AdelaiDet BoxInst/CondInst checkpoint (the paper's models)")
    s.add_argument("source", help="AdelaiDet .pth file ({'model': state_dict} or a bare state dict)")
    s.add_argument("--out", required=True, help="this project's checkpoint to write (e.g. boxinst_r50.pt)")
    s.add_argument("--class-names", default=None, metavar="FILE",
                   help="class names (json list or one per line; default: COCO's 80 for an 80-class model)")
    s.set_defaults(func=cmd_import_weights)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("eval", help="COCO bbox and mask AP of a checkpoint")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--images", default=None)
    s.add_argument("--json", default=None, help="write metrics and predictions here")
    s.add_argument("--device", default="cpu")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_eval)


def _add_export(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("export", help="export a checkpoint to ONNX or a TensorRT plan")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--format", default="onnx", choices=("onnx", "tensorrt"))
    s.add_argument("--out", default=None, help="output folder (model.onnx, model.plan)")
    s.add_argument("--triton", default=None, metavar="REPOSITORY",
                   help="write boxinst_net (+ its serving config) into this Triton repository instead")
    s.add_argument("--flavour", default="cpu", choices=("cpu", "onnxruntime", "tensorrt"),
                   help="--triton: cpu = Python backend + ONNX Runtime (runs anywhere); onnxruntime / tensorrt "
                        "for NVIDIA's GPU container")
    s.add_argument("--instances", type=int, default=1, help="--triton: boxinst_net instances")
    s.add_argument("--trt-accelerator", action="store_true",
                   help="--triton --flavour onnxruntime: TensorRT execution accelerator")
    s.add_argument("--max-pixels", type=int, default=None, help="--triton: decoded-size limit (default 50 MP)")
    s.add_argument("--max-detections", type=int, default=None, help="K of the padded outputs (default: config)")
    s.add_argument("--test-size", type=_size, default=None, metavar="SHORTxMAX",
                   help="inference resize (short side x max side) to record in the export, e.g. 384x640 "
                        "(default: the checkpoint's)")
    s.add_argument("--opset", type=int, default=18)
    s.add_argument("--onnx", default=None, help="tensorrt: build from this ONNX file (default: OUT/model.onnx)")
    s.add_argument("--fp16", action="store_true", help="tensorrt: allow FP16 kernels")
    s.add_argument("--min-shape", type=_size, default=None,
                   help="tensorrt profile: smallest HxW (default: 32x32, the smallest padded image: a very wide or "
                        "tall one, capped by the test long side)")
    s.add_argument("--opt-shape", type=_size, default=None,
                   help="tensorrt profile: tuned HxW (default: the test sizes padded, e.g. 800x1344)")
    s.add_argument("--max-shape", type=_size, default=None,
                   help="tensorrt profile: largest HxW (default: the test long side padded, square, e.g. 1344x1344)")
    s.add_argument("--opt-batch", type=int, default=1)
    s.add_argument("--max-batch", type=int, default=8, help="tensorrt profile / Triton max_batch_size")
    s.add_argument("--workspace-gib", type=float, default=4.0)
    s.add_argument("--int8", action="store_true",
                   help="onnx: also write OUT/model_int8.onnx (ONNX Runtime static INT8, QDQ); tensorrt: INT8 plan; "
                        "--triton: serve the INT8 engine")
    s.add_argument("--calibration", default=None, metavar="DATA.json",
                   help="--int8: COCO json whose images calibrate the INT8 ranges (images/ beside it)")
    s.add_argument("--calibration-image-dir", default=None, help="--int8: image folder of --calibration")
    s.add_argument("--calibration-images", type=int, default=64, help="--int8: images used from --calibration")
    s.add_argument("--calibration-method", default=None, choices=("minmax", "entropy", "percentile"),
                   help="--int8 (ONNX Runtime): range calibration (default percentile); TensorRT uses its entropy "
                        "calibrator")
    s.add_argument("--calibration-cache", default=None,
                   help="--int8 tensorrt: calibration cache file, read if it exists, written otherwise")
    s.add_argument("--int8-float", default=None, metavar="GROUPS",
                   help="--int8: comma-separated convolution groups kept in float (first_conv, head_outputs, "
                        "mask_branch_out; 'none': every convolution in INT8; default head_outputs,mask_branch_out)")
    s.add_argument("--int8-reduce-range", choices=("auto", "on", "off"), default="auto",
                   help="--int8 with ONNX Runtime: 7-bit weights, which avoid saturation on x86 CPUs without VNNI "
                        "(auto: on when the exporting CPU lacks VNNI; say on/off for the serving CPU)")
    s.set_defaults(func=cmd_export)


def _add_segment(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("segment", help="segment images or folders: overlays + COCO results json")
    s.add_argument("inputs", nargs="*", help="image files or folders")
    s.add_argument("--model", default=None, help="checkpoint (.pt), ONNX model (.onnx) or TensorRT plan (.plan)")
    s.add_argument("--url", default=None, help="segment through a running `boxinst serve` (HOST:PORT) instead")
    s.add_argument("--timeout", type=float, default=30.0, help="--url: seconds per request")
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
    s.add_argument("--model", default=None, help="checkpoint (.pt), ONNX model (.onnx) or TensorRT plan (.plan)")
    s.add_argument("--url", default=None, help="segment through a running `boxinst serve` (HOST:PORT) instead")
    s.add_argument("--timeout", type=float, default=30.0, help="--url: seconds per request")
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
    s.add_argument("--cpus-per-worker", type=float, default=1.0,
                   help="--ray: CPUs per worker (decode and writer threads; CPU inference)")
    s.add_argument("--max-attempts", type=int, default=3,
                   help="--ray: worker deaths on one video before it is reported as failed")
    s.add_argument("--start-timeout", type=float, default=600.0, help="--ray: seconds for all workers to be up")
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


def _add_serve(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("serve", help="serve a model repository with Triton (gRPC) until Ctrl-C")
    s.add_argument("--repository", default="model_repository")
    s.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 exposes it to the network)")
    s.add_argument("--grpc-port", type=int, default=8001)
    s.add_argument("--http-port", type=int, default=8000)
    s.add_argument("--metrics-port", type=int, default=8002)
    s.add_argument("--log", default=None, help="tritonserver log file (default: a temporary file)")
    s.add_argument("--ready-timeout", type=float, default=180.0, help="seconds to wait for the models")
    s.add_argument("--exit-timeout", type=int, default=30, help="seconds in-flight requests get at shutdown")
    s.set_defaults(func=cmd_serve)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("bench", help="end-to-end latency of the torch and onnxruntime engines")
    s.add_argument("--checkpoint", default=None, help="weights (default: a freshly initialised --config)")
    s.add_argument("--config", default="lite")
    s.add_argument("--size", type=_size, default=None, help="test size HxW (short side x max side)")
    s.add_argument("--image", default=None, help="image file (default: random pixels of --size)")
    s.add_argument("--engines", default="torch,onnxruntime",
                   help="comma-separated: torch, onnxruntime, onnxruntime-int8, tensorrt")
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
    s.add_argument("--url", default=None, help="load-test this server (HOST:PORT, gRPC) instead of engines")
    s.add_argument("--repository", default="model_repository",
                   help="--url: the served repository (its ONNX model gives the in-process baseline)")
    s.add_argument("--concurrency", type=_ints, default=(1, 2, 4, 8), help="--url: clients, e.g. 1,2,4,8")
    s.add_argument("--input", default=None,
                   help="--url: camera frames by input path instead of load: png, raw, shm or several "
                        "(comma-separated); latency split into encode, transfer, queue, server compute, decode")
    s.add_argument("--raw-model", default=None,
                   help="--input raw,shm: the served model raw frames go to (default: the client's choice, "
                        "boxinst_raw_fused where the server has it, else the boxinst_raw ensemble)")
    s.add_argument("--frames", type=_frame_sizes, default=((480, 640), (720, 1280)),
                   help="--input: frame sizes as WIDTHxHEIGHT, comma-separated (default 640x480,1280x720); "
                        "--image resized to each, else random pixels")
    s.add_argument("--video", default=None,
                   help="video throughput on this clip: plain one-frame loop vs `boxinst video` at --batch-sizes "
                        "(model from --checkpoint: .pt, .onnx or .plan)")
    s.add_argument("--batch-sizes", type=_ints, default=(1, 4, 8), help="--video: batch sizes to measure")
    s.add_argument("--ray-workers", type=_ints, default=None,
                   help="--video SOURCE (folder, glob, list file): single-process `boxinst video` against `--ray` "
                        "with these worker counts, e.g. 1,2, on a local Ray (batch: the first of --batch-sizes)")
    s.add_argument("--repeats", type=int, default=3, help="--ray-workers: turns over the paths (medians reported)")
    s.add_argument("--duration", type=float, default=10.0, help="--url: seconds per concurrency level")
    s.set_defaults(func=cmd_bench)


def _add_info(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("info", help="parameter count and GFLOPs of a preset")
    s.add_argument("--config", default="r50_fpn")
    s.add_argument("--size", type=_size, default=(800, 1344), help="input HxW (multiples of 32)")
    s.add_argument("--num-classes", type=int, default=80)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_info)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="boxinst", description="BoxInst: instance segmentation trained from boxes.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    _add_make_shapes(sub)
    _add_train(sub)
    _add_import_weights(sub)
    _add_eval(sub)
    _add_export(sub)
    _add_segment(sub)
    _add_video(sub)
    _add_annotate(sub)
    _add_serve(sub)
    _add_bench(sub)
    _add_info(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "func", None) is cmd_bench:
        args.size_given = args.size is not None
        if args.size is None:
            args.size = (512, 512)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("onnx_ir", "onnxscript", "torch.onnx"):  # one line per graph pass at INFO
        logging.getLogger(chatty).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError, MemoryError) as e:
        print(f"boxinst {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"boxinst {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
