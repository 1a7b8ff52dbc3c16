"""The client robots call: BoxInst masks over gRPC from a Triton server running the `boxinst`
ensemble (DESIGN.md, "Client and results").

    from boxinst_serve.client import BoxInstClient
    with BoxInstClient("127.0.0.1:8001") as client:
        inst = client.segment("frame.jpg")          # path, encoded bytes or RGB uint8 [H, W, 3]
        for g in inst.geometry(): print(g["centroid"], g["angle_deg"])

Light: needs numpy and tritonclient[grpc] (pycocotools to decode masks, OpenCV only to send numpy
images or compute geometry); never torch. Every server-side failure raises `BoxInstError` with
the server's message; a request that takes longer than `timeout_s` raises `BoxInstTimeout`."""
from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np

from boxinst_serve.results import Instances

ImageInput = Union[str, os.PathLike, bytes, bytearray, np.ndarray]
OUTPUTS = ("num_instances", "boxes", "scores", "classes", "masks_rle", "image_size")
NET_MODEL = "boxinst_net"  # where the class names live (config parameter written by export)


class BoxInstError(RuntimeError):
    """A request failed on the server or on the way there; the message is the server's."""


class BoxInstTimeout(BoxInstError):
    """The request did not complete within the client's timeout."""


def encode_input(image: ImageInput) -> bytes:
    """A path, encoded bytes or an RGB uint8 [H, W, 3] array -> encoded image bytes (PNG for arrays)."""
    if isinstance(image, (bytes, bytearray)):
        if not image:
            raise ValueError("image is empty (0 bytes)")
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image '{path}' does not exist")
        return path.read_bytes()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"numpy images must be RGB uint8 [H, W, 3], got {image.dtype} {tuple(image.shape)}")
        import cv2

        ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            raise ValueError("could not encode the numpy image as PNG")
        return buf.tobytes()
    raise TypeError(f"image must be a path, bytes or a numpy array, got {type(image).__name__}")


def _wrap(e: Exception) -> BoxInstError:
    msg = e.message() if hasattr(e, "message") and callable(e.message) else str(e)
    status = e.status() if hasattr(e, "status") and callable(e.status) else ""
    text = f"{msg}" if not status else f"{msg} ({status})"
    if "Deadline Exceeded" in text or "DEADLINE_EXCEEDED" in str(status):
        return BoxInstTimeout(f"request timed out: {text}")
    return BoxInstError(text)


def _request(grpcclient, data: bytes, mask_format: str):
    if mask_format not in ("rle", "bitmap"):
        raise ValueError(f"mask_format must be 'rle' or 'bitmap', got {mask_format!r}")
    image = grpcclient.InferInput("image", [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[data]], dtype=np.object_))
    fmt = grpcclient.InferInput("mask_format", [1, 1], "BYTES")
    fmt.set_data_from_numpy(np.array([[mask_format.encode()]], dtype=np.object_))
    names = OUTPUTS + (("masks",) if mask_format == "bitmap" else ())
    return [image, fmt], [grpcclient.InferRequestedOutput(n) for n in names]


def _instances(result, class_names: list[str], mask_format: str) -> Instances:
    n = int(result.as_numpy("num_instances").reshape(-1)[0])
    h, w = (int(v) for v in result.as_numpy("image_size").reshape(-1)[:2])
    counts = result.as_numpy("masks_rle").reshape(-1)[:n]
    rle = [{"size": [h, w], "counts": c.decode("ascii") if isinstance(c, bytes) else str(c)} for c in counts]
    inst = Instances(boxes=result.as_numpy("boxes").reshape(-1, 4)[:n].astype(np.float32),
                     scores=result.as_numpy("scores").reshape(-1)[:n].astype(np.float32),
                     classes=result.as_numpy("classes").reshape(-1)[:n].astype(np.int64),
                     rle=rle, image_size=(h, w), class_names=list(class_names))
    if mask_format == "bitmap":
        inst._masks = result.as_numpy("masks").reshape(-1, h, w)[:n].astype(bool)
    return inst


def _class_names(config: Any) -> list[str]:
    import json

    params = config.get("config", config).get("parameters", {}) if isinstance(config, dict) else {}
    raw = params.get("class_names", {}).get("string_value", "[]")
    try:
        return list(json.loads(raw))
    except ValueError:
        return []


class BoxInstClient:
    """Blocking client. `segment_batch` sends its images concurrently (Triton batches them)."""

    def __init__(self, url: str = "127.0.0.1:8001", model: str = "boxinst", timeout_s: float = 10.0,
                 max_workers: int = 8):
        import tritonclient.grpc as grpcclient

        self._grpc = grpcclient
        self.url, self.model, self.timeout_s = url, model, timeout_s
        # 64 MiB messages: bitmap masks of large images do not fit gRPC's 4 MiB default.
        opts = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
        self._client = grpcclient.InferenceServerClient(url, channel_args=opts)
        self._pool = ThreadPoolExecutor(max_workers=max_workers)
        self._class_names: list[str] | None = None

    @property
    def class_names(self) -> list[str]:
        if self._class_names is None:
            try:
                cfg = self._client.get_model_config(NET_MODEL, as_json=True, client_timeout=self.timeout_s)
            except Exception as e:  # noqa: BLE001
                raise _wrap(e) from e
            self._class_names = _class_names(cfg)
        return self._class_names

    def is_ready(self) -> bool:
        try:
            return bool(self._client.is_server_ready(client_timeout=self.timeout_s)
                        and self._client.is_model_ready(self.model, client_timeout=self.timeout_s))
        except Exception:  # noqa: BLE001 - a dead server is simply not ready
            return False

    def segment(self, image: ImageInput, mask_format: str = "rle") -> Instances:
        """One image -> Instances at its original resolution (masks decoded lazily from RLE)."""
        inputs, outputs = _request(self._grpc, encode_input(image), mask_format)
        names = self.class_names
        try:
            result = self._client.infer(self.model, inputs, outputs=outputs, client_timeout=self.timeout_s)
        except Exception as e:  # noqa: BLE001 - tritonclient raises InferenceServerException
            raise _wrap(e) from e
        return _instances(result, names, mask_format)

    def segment_batch(self, images: Sequence[ImageInput], mask_format: str = "rle") -> list[Instances]:
        """Several images, sent concurrently; results in input order. The first failure raises."""
        futures = [self._pool.submit(self.segment, im, mask_format) for im in images]
        return [f.result() for f in futures]

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self._client.close()

    def __enter__(self) -> "BoxInstClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncBoxInstClient:
    """asyncio variant: `await client.segment(image)`, `await client.segment_batch(images)`."""

    def __init__(self, url: str = "127.0.0.1:8001", model: str = "boxinst", timeout_s: float = 10.0):
        import tritonclient.grpc as grpcclient
        import tritonclient.grpc.aio as aioclient

        self._grpc = grpcclient
        self.url, self.model, self.timeout_s = url, model, timeout_s
        opts = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
        self._client = aioclient.InferenceServerClient(url, channel_args=opts)
        self._class_names: list[str] | None = None

    async def class_names(self) -> list[str]:
        if self._class_names is None:
            try:
                cfg = await self._client.get_model_config(NET_MODEL, as_json=True, client_timeout=self.timeout_s)
            except Exception as e:  # noqa: BLE001
                raise _wrap(e) from e
            self._class_names = _class_names(cfg)
        return self._class_names

    async def segment(self, image: ImageInput, mask_format: str = "rle") -> Instances:
        inputs, outputs = _request(self._grpc, encode_input(image), mask_format)
        names = await self.class_names()
        try:
            result = await self._client.infer(self.model, inputs, outputs=outputs, client_timeout=self.timeout_s)
        except Exception as e:  # noqa: BLE001
            raise _wrap(e) from e
        return _instances(result, names, mask_format)

    async def segment_batch(self, images: Sequence[ImageInput], mask_format: str = "rle") -> list[Instances]:
        return list(await asyncio.gather(*(self.segment(im, mask_format) for im in images)))

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> "AsyncBoxInstClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
