"""The `boxinst` command: one entry point with verbs. It parses and delegates: each group of verbs
is a module here with its parsers and short handlers (training: make-shapes, train,
import-weights, eval; export; run: segment, video, annotate; serve; bench: bench, info), and the
work is done by the library, the apps (boxinst_serve.apps), `training` and `export`. Heavy modules
(torch, training, export) are imported inside each handler so that `boxinst --help` and the light
client stay fast."""
from __future__ import annotations

import argparse
import logging
import sys

from boxinst_serve.cli import bench, export, run, serve, training

GROUPS = (training, export, run, serve, bench)  # in the order of the verbs in `boxinst --help`


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="boxinst", description="BoxInst: instance segmentation trained from boxes.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("onnx_ir", "onnxscript", "torch.onnx"):  # one line per graph pass at INFO
        logging.getLogger(chatty).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError, MemoryError, ImportError) as e:  # ImportError: an extra
        print(f"boxinst {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"boxinst {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
