"""An honest health check for a server without `boxinst serve`'s supervisor (NVIDIA's container,
Dockerfile HEALTHCHECK): a tiny inference through the raw-frame ensemble over HTTP, which fails
when any of its steps is dead, where Triton 2.51's ready endpoint still answers ready.

    python3 -m boxinst_serve.serving.probe [--url 127.0.0.1:8000] [--model boxinst_raw] [--timeout 5]

The API key, where the server wants one, comes from the BOXINST_API_KEY environment variable
(protocol.API_KEY_ENV), never from the command line. Exit 0 when the model answered, 1 (with the
reason on stderr) when not. The request goes through the standard library's urllib (the serving
image has no tritonclient); the module itself loads with boxinst_serve's serving package, so it
needs numpy and OpenCV (which the image installs for the Python steps), not torch."""
from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request

from boxinst_serve.protocol import API_KEY_ENV, API_KEY_HEADER, RAW_MODEL

SIDE = 32  # a 32x32 grey frame: every step runs, nothing costs


def probe_http(url: str = "127.0.0.1:8000", model: str = RAW_MODEL, api_key: str | None = None,
               timeout_s: float = 5.0) -> int:
    """One inference of a grey SIDE x SIDE frame through `model` (Triton's HTTP/JSON API).
    -> the number of instances; raises RuntimeError naming what failed."""
    body = {"inputs": [{"name": "image", "shape": [1, SIDE, SIDE, 3], "datatype": "UINT8",
                        "data": [114] * (SIDE * SIDE * 3)},
                       {"name": "mask_format", "shape": [1, 1], "datatype": "BYTES", "data": ["rle"]}],
            "outputs": [{"name": "num_instances"}]}
    headers = {"Content-Type": "application/json", **({API_KEY_HEADER: api_key} if api_key else {})}
    request = urllib.request.Request(f"http://{url}/v2/models/{model}/infer", data=json.dumps(body).encode(),
                                     headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{model} at {url}: HTTP {e.code}: {e.read().decode(errors='replace')[:300]}") from e
    except (urllib.error.URLError, OSError) as e:
        raise RuntimeError(f"{model} at {url}: {e}") from e
    outputs = {o["name"]: o for o in answer.get("outputs", [])}
    if "num_instances" not in outputs:
        raise RuntimeError(f"{model} at {url}: no num_instances in the answer: {str(answer)[:300]}")
    return int(outputs["num_instances"]["data"][0])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="tiny inference through a served model: exit 0 if it answered")
    p.add_argument("--url", default="127.0.0.1:8000", help="Triton's HTTP endpoint")
    p.add_argument("--model", default=RAW_MODEL)
    p.add_argument("--timeout", type=float, default=5.0)
    args = p.parse_args(argv)
    try:
        probe_http(args.url, args.model, os.environ.get(API_KEY_ENV) or None, args.timeout)
    except RuntimeError as e:
        print(f"unhealthy: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
