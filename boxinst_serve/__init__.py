"""boxinst-serve: BoxInst instance segmentation trained from boxes, served in real time.

    import boxinst_serve as bs
    inst = bs.Predictor.load("model.onnx")(bs.read_image("frame.jpg"))   # in process
    with bs.BoxInstClient("127.0.0.1:8001") as client:                    # from a server
        inst = client.segment("frame.jpg")

The public names are loaded on first use, so `import boxinst_serve` loads neither torch nor
OpenCV (docs/architecture.md: where everything is)."""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "Predictor": "boxinst_serve.predictor",
    "Instances": "boxinst_serve.results",
    "ModelConfig": "boxinst_serve.config",
    "preset": "boxinst_serve.config",
    "load_engine": "boxinst_serve.engines",
    "load_model": "boxinst_serve.checkpoint",
    "read_image": "boxinst_serve.preprocess",
    "check_frame": "boxinst_serve.protocol",
    "BoxInstClient": "boxinst_serve.client",
    "AsyncBoxInstClient": "boxinst_serve.client",
    "BoxInstError": "boxinst_serve.client",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'boxinst_serve' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
