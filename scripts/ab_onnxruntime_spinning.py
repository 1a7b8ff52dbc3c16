"""A/B of ONNX Runtime's spinning idle threads, served and in process, in one interleaved run
(docs/benchmarks.md, "Camera frame to instances"): two `boxinst serve` of the same export, one
with boxinst_net's config parameter intra_op_spinning "0" (the cpu flavour's default) and one
with "1", and the in-process path with spinning off and on; the four paths take turns.

    python scripts/ab_onnxruntime_spinning.py --url-off 127.0.0.1:18701 --url-on 127.0.0.1:18711 \\
        --repository REPO --image frame.png --iters 20
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from boxinst_serve.apps.bench.frames import frame_of, in_process_runner
from boxinst_serve.client import BoxInstClient


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url-off", required=True, help="server whose boxinst_net has intra_op_spinning 0")
    p.add_argument("--url-on", required=True, help="server whose boxinst_net has intra_op_spinning 1")
    p.add_argument("--repository", required=True, help="the export both serve (for the in-process runs)")
    p.add_argument("--image", default=None)
    p.add_argument("--frame", default="640x480", help="WIDTHxHEIGHT")
    p.add_argument("--iters", type=int, default=20)
    args = p.parse_args()
    w, h = (int(v) for v in args.frame.lower().split("x"))
    frame = frame_of((h, w), args.image)
    off = in_process_runner(args.repository, spinning=False)
    on = in_process_runner(args.repository, spinning=True)
    with BoxInstClient(args.url_off, shared_memory=True, timeout_s=60) as c_off, \
            BoxInstClient(args.url_on, shared_memory=True, timeout_s=60) as c_on:
        paths = {"served (shm), spinning off": lambda: c_off.segment(frame),
                 "served (shm), spinning on": lambda: c_on.segment(frame),
                 "in process, spinning off": lambda: off(frame), "in process, spinning on": lambda: on(frame)}
        names = list(paths)
        times = {k: [] for k in names}
        for i in range(3 + args.iters):
            for k in names[i % 4:] + names[:i % 4]:  # rotate who goes first
                t0 = time.perf_counter()
                paths[k]()
                if i >= 3:
                    times[k].append(time.perf_counter() - t0)
    print(f"{args.frame}, {args.iters} runs per path, interleaved")
    for k in names:
        print(f"{k}: p50 {np.median(times[k]) * 1e3:.1f} ms, p95 {np.percentile(times[k], 95) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
