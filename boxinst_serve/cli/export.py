"""The export verb: a checkpoint to ONNX (+ INT8), an OpenVINO IR, a TensorRT plan, or a Triton repository's
boxinst_net (the `export` package, imported inside the handlers: it needs torch)."""
from __future__ import annotations

import argparse

from boxinst_serve.cli.args import add_queue_flags, parse_size


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
        int8 = _int8_options(args)
        if args.triton:
            return _export_triton(args, int8)
        if not args.out:
            raise ValueError("give --out FOLDER (or --triton REPOSITORY)")
        if args.format == "onnx":
            return _export_onnx(args, int8)
        if args.format == "openvino":
            return _export_openvino(args, int8)
        return _export_tensorrt(args, int8)


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


def _export_triton(args: argparse.Namespace, int8) -> int:
    from boxinst_serve.cli.args import queue_policy
    from export.triton import write_triton_net

    net = write_triton_net(args.checkpoint, args.triton, flavour=args.flavour, onnx_path=args.onnx,
                           max_batch_size=args.max_batch, instances=args.instances,
                           trt_accelerator=args.trt_accelerator, fp16=args.fp16, max_pixels=args.max_pixels,
                           int8=int8, queue=queue_policy(args))
    print(f"Triton model {net} ({args.flavour}{', INT8' if int8 else ''}); serve it with "
          f"`boxinst serve --repository {args.triton}`")
    return 0


def _export_onnx(args: argparse.Namespace, int8) -> int:
    from pathlib import Path

    from export.onnx import export_onnx

    out = Path(args.out)
    path = export_onnx(args.checkpoint, out, max_detections=args.max_detections, opset=args.opset)
    print(f"ONNX model: {path}")
    if int8:
        from export.quantize import quantize_exported

        q = quantize_exported(path, int8, out / "model_int8.onnx")
        print(f"INT8 ONNX model: {q} ({int8.method} calibration on {args.calibration}; float: "
              f"{', '.join(int8.exclude) or 'only non-convolution ops'})")
    return 0


def _export_openvino(args: argparse.Namespace, int8) -> int:
    from boxinst_serve.engines.openvino_engine import require_openvino

    require_openvino()  # before any export work: the clear error first
    from export.openvino import export_openvino

    xml = export_openvino(args.checkpoint, args.out, onnx_path=args.onnx, max_detections=args.max_detections,
                          opset=args.opset)
    print(f"OpenVINO IR: {xml} (+ {xml.with_suffix('.bin').name}, fp32); run it with "
          f"`boxinst segment --model {xml}` or load_engine('{xml}')")
    if int8 is not None:
        _export_openvino_int8(args, int8, xml)
    return 0


# INT8 below this speed-up over fp32 on the exporting CPU is reported as not paying there.
INT8_MIN_GAIN = 1.1


def _export_openvino_int8(args: argparse.Namespace, int8, xml) -> None:
    """model_int8.xml beside `xml` (NNCF), then both timed on this CPU: the export says whether
    INT8 pays here, and keeps fp32 as what it recommends where it does not."""
    from pathlib import Path

    from boxinst_serve.config import ModelConfig
    from boxinst_serve.measure import machine_description
    from export.calibration import CalibrationImages
    from export.onnx import read_metadata
    from export.openvino import int8_speedup, quantize_ir

    onnx_path = Path(args.onnx) if args.onnx else Path(args.out) / "model.onnx"
    q = quantize_ir(onnx_path, int8, args.out)
    cfg = ModelConfig.from_json(read_metadata(onnx_path)["model_config"])
    image = next(iter(CalibrationImages.from_coco(int8.calibration, cfg, 1, int8.images_dir)))
    fp32_ms, int8_ms = int8_speedup(xml, q, image)
    gain = fp32_ms / int8_ms
    print(f"INT8 OpenVINO IR: {q} (NNCF, calibrated on {args.calibration}; float: "
          f"{', '.join(int8.exclude) or 'only what NNCF keeps'}); on this CPU ({machine_description()}), "
          f"one {image.shape[2]}x{image.shape[1]} image: fp32 {fp32_ms:.1f} ms, int8 {int8_ms:.1f} ms ({gain:.2f}x)")
    if gain < INT8_MIN_GAIN:
        print(f"INT8 does not pay on this CPU ({gain:.2f}x < {INT8_MIN_GAIN}x): keep {xml.name} (fp32) here; "
              "another CPU kind may differ (docs/benchmarks.md)")


def _export_tensorrt(args: argparse.Namespace, int8) -> int:
    from pathlib import Path

    from export.tensorrt import build_engine, require_tensorrt

    require_tensorrt()  # before any export work: the clear error first
    out = Path(args.out)
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


def _add_export(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("export", help="export a checkpoint to ONNX, an OpenVINO IR or a TensorRT plan")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--format", default="onnx", choices=("onnx", "openvino", "tensorrt"))
    s.add_argument("--out", default=None, help="output folder (model.onnx; model.xml + model.bin; model.plan)")
    s.add_argument("--triton", default=None, metavar="REPOSITORY",
                   help="write boxinst_net (+ its serving config) into this Triton repository instead")
    s.add_argument("--flavour", default="cpu", choices=("cpu", "openvino", "onnxruntime", "tensorrt"),
                   help="--triton: cpu = Python backend + ONNX Runtime (runs anywhere); openvino = Python "
                        "backend + OpenVINO (the IR; NNCF INT8 with --int8); onnxruntime / tensorrt for NVIDIA's "
                        "GPU container")
    s.add_argument("--instances", type=int, default=1, help="--triton: boxinst_net instances")
    s.add_argument("--trt-accelerator", action="store_true",
                   help="--triton --flavour onnxruntime: TensorRT execution accelerator")
    s.add_argument("--max-pixels", type=int, default=None, help="--triton: decoded-size limit (default 50 MP)")
    add_queue_flags(s)
    s.add_argument("--max-detections", type=int, default=None, help="K of the padded outputs (default: config)")
    s.add_argument("--test-size", type=parse_size, default=None, metavar="SHORTxMAX",
                   help="inference resize (short side x max side) to record in the export, e.g. 384x640 "
                        "(default: the checkpoint's)")
    s.add_argument("--opset", type=int, default=18)
    s.add_argument("--onnx", default=None,
                   help="tensorrt, openvino: build from this ONNX file (default: tensorrt OUT/model.onnx where it "
                        "exists; openvino exports OUT/model.onnx anew)")
    _add_export_tensorrt(s)
    _add_export_int8(s)
    s.set_defaults(func=cmd_export)


def _add_export_tensorrt(s: argparse.ArgumentParser) -> None:
    s.add_argument("--fp16", action="store_true", help="tensorrt: allow FP16 kernels")
    s.add_argument("--min-shape", type=parse_size, default=None,
                   help="tensorrt profile: smallest HxW (default: 32x32, the smallest padded image: a very wide or "
                        "tall one, capped by the test long side)")
    s.add_argument("--opt-shape", type=parse_size, default=None,
                   help="tensorrt profile: tuned HxW (default: the test sizes padded, e.g. 800x1344)")
    s.add_argument("--max-shape", type=parse_size, default=None,
                   help="tensorrt profile: largest HxW (default: the test long side padded, square, e.g. 1344x1344)")
    s.add_argument("--opt-batch", type=int, default=1)
    s.add_argument("--max-batch", type=int, default=8, help="tensorrt profile / Triton max_batch_size")
    s.add_argument("--workspace-gib", type=float, default=4.0)


def _add_export_int8(s: argparse.ArgumentParser) -> None:
    s.add_argument("--int8", action="store_true",
                   help="onnx: also write OUT/model_int8.onnx (ONNX Runtime static INT8, QDQ); openvino: also "
                        "OUT/model_int8.xml (NNCF), timed against fp32 on this CPU; tensorrt: INT8 plan; "
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


def add_parsers(sub: argparse._SubParsersAction) -> None:
    _add_export(sub)
