"""Verbs of the training side: make-shapes, train, import-weights, eval (the `training` package,
imported inside each handler: it needs torch)."""
from __future__ import annotations

import argparse

from boxinst_serve.cli.args import parse_ints, parse_range


def cmd_make_shapes(args: argparse.Namespace) -> int:
    from training.shapes import make_shapes

    info = make_shapes(args.out, args.num_images, seed=args.seed, size=args.size, val_fraction=args.val_fraction,
                       objects=args.objects)
    print(f"wrote {info['num_train']} train and {info['num_val']} val images: {info['train']}, {info['val']}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from training.config import LossConfig, training_config, training_model_config
    from training.trainer import resolve_device, train

    loss = LossConfig(supervision=args.supervision, box_loss=args.box_loss,
                      pairwise_color_thresh=args.tau, topk_proposals_per_image=args.topk_proposals,
                      mask_classes=tuple(c for c in (args.mask_classes or "").split(",") if c),
                      hole_loss_weight=args.hole_loss)
    model_cfg = training_model_config(args.config, args.init, min_sizes=args.min_sizes, max_size=args.max_size,
                                      min_size_test=args.min_size_test, max_size_test=args.max_size_test)
    device = resolve_device(args.device)
    train_cfg = training_config(
        model_cfg, device.type, args.iters, loss=loss, pairwise_warmup_iters=args.pairwise_warmup_iters,
        batch_size=args.batch_size, min_sizes=args.min_sizes, max_size=args.max_size, num_workers=args.workers,
        checkpoint_period=args.checkpoint_period, warmup_iters=args.warmup_iters, log_period=args.log_period,
        lr=args.lr, seed=args.seed, clip_grad_norm=args.clip_grad, amp=not args.no_amp,
        heal=False if args.no_heal else None, max_heals=args.max_heals)
    resume = args.resume or (args.resume_if_exists and (Path(args.out) / "last.pt").exists())
    final = train(model_cfg, train_cfg, args.data, args.out, images_dir=args.images, resume=resume,
                  device=str(device), pretrained_backbone=args.pretrained_backbone, init_checkpoint=args.init,
                  progress=not args.quiet, max_memory_gb=args.max_memory, reset_classes=args.reset_classes)
    print(f"checkpoint: {final}")
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


def cmd_eval(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate, format_table

    report = evaluate(args.checkpoint, args.data, args.images, args.json, device=args.device,
                      progress=not args.quiet)
    print(format_table(report))
    if args.json:
        print(f"metrics and predictions: {args.json}")
    return 0


def _add_make_shapes(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("make-shapes", help="write the synthetic shapes set (COCO json + PNGs)")
    s.add_argument("out")
    s.add_argument("--num-images", type=int, default=500)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=int, default=320, help="image side in pixels")
    s.add_argument("--val-fraction", type=float, default=0.2)
    s.add_argument("--objects", type=parse_range, default=(1, 6), metavar="N|MIN-MAX",
                   help="shapes attempted per image (default 1-6; above 6 they are drawn smaller to fit)")
    s.set_defaults(func=cmd_make_shapes)


def _add_train(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("train", help="train BoxInst from a COCO json")
    s.add_argument("--data", required=True, help="COCO json with boxes (segmentations optional)")
    s.add_argument("--images", default=None, help="image folder (default: images/ beside the json)")
    s.add_argument("--config", default=None,
                   help="model preset: r50_fpn (default), r101_fpn, lite, nano; with --init, the checkpoint's")
    s.add_argument("--iters", type=int, default=90000)
    s.add_argument("--out", required=True, help="run folder: checkpoints, metrics.jsonl, config.json")
    s.add_argument("--batch-size", type=int, default=None,
                   help="images per iteration, all processes together (default: the preset's on this device: "
                        "lite and nano 4 on a CPU, the paper's 16 for r50_fpn/r101_fpn on CUDA; "
                        "training/config.py RECIPES)")
    s.add_argument("--lr", type=float, default=None,
                   help="learning rate (default: the paper's 0.01 at any --batch-size, not scaled with it: scaled "
                        "linearly, lite's CPU batch of 4 would get 0.0025, where masks stayed blobs on 2 of 3 seeds, "
                        "docs/results.md; give 0.01 x batch / 16 to scale it)")
    s.add_argument("--warmup-iters", type=int, default=None, help="default: 1000 scaled to --iters/90000")
    s.add_argument("--pairwise-warmup-iters", type=int, default=None,
                   help="default: 10000 scaled to --iters/90000, at least 400 (or a third of --iters, when that "
                        "is less); training/config.py MIN_PAIRWISE_WARMUP_ITERS")
    _add_train_losses(s)
    _add_train_sizes(s)
    _add_train_run(s)
    s.set_defaults(func=cmd_train)


def _add_train_losses(s: argparse.ArgumentParser) -> None:
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


def _add_train_sizes(s: argparse.ArgumentParser) -> None:
    s.add_argument("--min-sizes", type=parse_ints, default=None,
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


def _add_train_run(s: argparse.ArgumentParser) -> None:
    s.add_argument("--clip-grad", type=float, default=0.0, help="gradient-norm clip (0: off)")
    s.add_argument("--no-heal", action="store_true",
                   help="only warn when the mask head collapses (default: heal it: go back to the last healthy "
                        "window, the mask side at a lower step, and go on; training/heal.py)")
    s.add_argument("--max-heals", type=int, default=None, help="heals at most per run (default 2)")
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


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """make-shapes, train, import-weights, eval, in the order of `boxinst --help`."""
    _add_make_shapes(sub)
    _add_train(sub)
    _add_import_weights(sub)
    _add_eval(sub)
