"""The client robots call: BoxInst masks over gRPC from a Triton server running the `boxinst`
ensemble (docs/architecture.md, "Client and results").

    from boxinst_serve.client import BoxInstClient
    with BoxInstClient("127.0.0.1:8001") as client:
        inst = client.segment("frame.jpg")          # path, encoded bytes or RGB uint8 [H, W, 3]
        for g in inst.geometry(): print(g["centroid"], g["angle_deg"])

Numpy frames go to the `boxinst_raw` ensemble as they are (uint8 [1, H, W, 3], no PNG encode or
server-side decode), or, where the server has it (a `cpu` export), to `boxinst_raw_fused`: the
same inputs and outputs, its steps in one process; `arrays="png"` sends them PNG-encoded to
`boxinst` instead. With
`shared_memory=True` (client and server on the same host) frames and the fixed-size outputs
travel through system shared memory (boxinst_serve.client.shm) instead of the gRPC message.

Light: needs numpy and tritonclient[grpc] (pycocotools to decode masks, OpenCV only to PNG-encode
numpy images or compute 2-D geometry); never torch. Every server-side failure raises
`BoxInstError` with the server's message; a request that takes longer than `timeout_s` (or its
`deadline_ms`) raises `BoxInstTimeout`, and one the server refuses because its queue is full
`ServerBusy`, at once (docs/deployment.md, "Bounded queue and deadlines").

A secured server (docs/deployment.md, "Securing a server"): `ssl=True` with `root_certificates`
(the CA that signed the server's certificate; any of the three files implies TLS), plus
`private_key` and `certificate_chain` (the client's certificate) under mutual TLS; `api_key` (else
the BOXINST_API_KEY environment variable) goes as a header on every call the client makes."""
from __future__ import annotations

import asyncio
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np

from boxinst_serve.protocol import (API_KEY_ENV, ENSEMBLE_MODEL, FUSED_RAW_MODEL, GRPC_API_KEY_HEADER, NET_MODEL,
                                    OUTPUTS, RAW_MODEL, check_frame)
from boxinst_serve.results import Instances

ImageInput = Union[str, os.PathLike, bytes, bytearray, np.ndarray]
MAX_MESSAGE_BYTES = 64 << 20  # gRPC message limit set on the client's channel, both directions
ARRAY_MODES = ("raw", "png")


class BoxInstError(RuntimeError):
    """A request failed on the server or on the way there; the message is the server's."""


class BoxInstTimeout(BoxInstError):
    """The request did not complete within the client's timeout or its deadline (on the way, or
    refused by the server because it waited in a queue past its deadline)."""


class ServerBusy(BoxInstError):
    """The server refused the request at once because a queue of the model was full (Triton's
    max_queue_size): retry later, or serve more instances. Never retried by the client."""


# What Triton 2.51 answers (gRPC UNAVAILABLE, measured; "in ensemble 'boxinst', " before it when a
# step of an ensemble refused): a request that found a queue full, and one that waited past its deadline.
QUEUE_FULL = "Exceeds maximum queue size"
QUEUE_TIMEOUT = "Request timeout expired"


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


class ApiKeyPlugin:
    """tritonclient plugin (`client.register_plugin`): the API key header on every request of the
    client it is registered on, whichever method makes it (infer, config, readiness, shared memory...)."""

    def __init__(self, api_key: str):
        self._api_key = api_key

    def __call__(self, request) -> None:
        request.headers = {**(request.headers or {}), GRPC_API_KEY_HEADER: self._api_key}

    def __repr__(self) -> str:
        return "ApiKeyPlugin(***)"


def resolve_api_key(api_key: str | None) -> str | None:
    """The key given, else $BOXINST_API_KEY (stripped), else None."""
    if api_key is None:
        api_key = os.environ.get(API_KEY_ENV, "").strip() or None
    return api_key or None


def _tls_options(ssl: bool, root_certificates, private_key, certificate_chain) -> dict:
    """tritonclient's TLS keyword arguments, checked (it reads the files itself). Any file given
    implies TLS; the client's key and certificate (mutual TLS) go together."""
    files = {"root_certificates": root_certificates, "private_key": private_key,
             "certificate_chain": certificate_chain}
    for name, path in files.items():
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{name}: '{path}' does not exist")
    if (private_key is None) != (certificate_chain is None):
        raise ValueError("private_key and certificate_chain (the client's key and certificate, for mutual TLS) go "
                         "together")
    if not (ssl or any(v is not None for v in files.values())):
        return {}
    return {"ssl": True, **{k: str(v) for k, v in files.items() if v is not None}}


def _hint(text: str) -> str:
    """What a TLS or API-key refusal means for the caller (the server's words say little)."""
    if "protocol is restricted" in text:
        return (" (the server requires an API key and this one is missing or wrong: api_key=..., or the "
                f"{API_KEY_ENV} environment variable; `--api-key` on the command line)")
    low = text.lower()
    if any(s in low for s in ("handshake", "certificate_verify_failed", "ssl_error", "wrong version number",
                              "hostname verification")):
        return (" (TLS failed: give the CA that signed the server's certificate as root_certificates, connect "
                "under a name the certificate holds, and check the server uses TLS at all)")
    if "socket closed" in low:
        return (" (if the server uses TLS: ssl=True with root_certificates=its CA; under mutual TLS also "
                "private_key and certificate_chain)")
    return ""


def _wrap(e: Exception, model: str | None = None, queue_size: int | None = None,
          deadline_ms: float | None = None) -> BoxInstError:
    """tritonclient's exception -> BoxInstError (ServerBusy, BoxInstTimeout). model, queue_size,
    deadline_ms: the request's, for the message."""
    msg = e.message() if hasattr(e, "message") and callable(e.message) else str(e)
    status = e.status() if hasattr(e, "status") and callable(e.status) else ""
    text = f"{msg}" if not status else f"{msg} ({status})"
    if QUEUE_FULL in text:
        size = f" (max_queue_size {queue_size})" if queue_size is not None else ""
        return ServerBusy(f"server busy: the queue of {model or 'the model'} is full{size}; retry later or add "
                          f"instances (server: {text})")
    deadline = f" of {deadline_ms:g} ms" if deadline_ms is not None else ""
    if QUEUE_TIMEOUT in text:
        return BoxInstTimeout(f"deadline exceeded: the request waited in a queue of {model or 'the model'} past its "
                              f"deadline{deadline} and was dropped unserved (server: {text})")
    if "Deadline Exceeded" in text or "DEADLINE_EXCEEDED" in str(status):
        return BoxInstTimeout(f"request timed out{' at its deadline' + deadline if deadline else ''}: {text}")
    return BoxInstError(text + _hint(text))


# Failures of a server that is (re)starting or healing a step: worth a bounded retry. A refused
# input (INVALID_ARGUMENT), a timeout, a full queue (ServerBusy: the caller decides, a robot would
# rather take the next frame than wait for this one) or any other error is never retried.
TRANSIENT_MARKERS = ("StatusCode.UNAVAILABLE", "is not healthy", "not ready", "unknown model",
                     "has no available versions", "failed to connect", "Socket closed", "Connection reset",
                     "Unable to find shared memory region")


def is_transient(err: BoxInstError, model_answered_before: bool = True) -> bool:
    """Did this request fail because the server or one of its steps was down (retry), rather than
    because of the request itself (never retry)? "unknown model" counts only for a model that
    answered before (it is being reloaded), not for one the repository lacks."""
    text = str(err)
    if isinstance(err, (BoxInstTimeout, ServerBusy)) or "INVALID_ARGUMENT" in text:
        return False
    if "unknown model" in text and not model_answered_before:
        return False
    return any(m in text for m in TRANSIENT_MARKERS)


def _check_mask_format(mask_format: str) -> None:
    if mask_format not in ("rle", "bitmap"):
        raise ValueError(f"mask_format must be 'rle' or 'bitmap', got {mask_format!r}")


def _mask_format_input(grpcclient, mask_format: str):
    fmt = grpcclient.InferInput("mask_format", [1, 1], "BYTES")
    fmt.set_data_from_numpy(np.array([[mask_format.encode()]], dtype=np.object_))
    return fmt


def _request(grpcclient, data: bytes, mask_format: str):
    """Encoded image bytes -> (inputs, requested outputs) for the `boxinst` ensemble."""
    _check_mask_format(mask_format)
    image = grpcclient.InferInput("image", [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[data]], dtype=np.object_))
    names = OUTPUTS + (("masks",) if mask_format == "bitmap" else ())
    return [image, _mask_format_input(grpcclient, mask_format)], [grpcclient.InferRequestedOutput(n) for n in names]


def _raw_request(grpcclient, frame: np.ndarray, mask_format: str):
    """RGB uint8 [H, W, 3] (checked) -> (inputs, requested outputs) for the `boxinst_raw` ensemble."""
    _check_mask_format(mask_format)
    if frame.nbytes > MAX_MESSAGE_BYTES - (1 << 20):
        raise ValueError(f"image: a {frame.shape[1]}x{frame.shape[0]} frame is {frame.nbytes / 2**20:.0f} MiB, over "
                         f"the {MAX_MESSAGE_BYTES >> 20} MiB gRPC message limit: use shared_memory=True (same "
                         "host) or send it encoded (arrays='png')")
    image = grpcclient.InferInput("image", [1, *frame.shape], "UINT8")
    image.set_data_from_numpy(frame[None])
    names = OUTPUTS + (("masks",) if mask_format == "bitmap" else ())
    return [image, _mask_format_input(grpcclient, mask_format)], [grpcclient.InferRequestedOutput(n) for n in names]


def _instances(result, class_names: list[str], mask_format: str, arrays: dict | None = None) -> Instances:
    """An InferResult (and, for outputs that came through shared memory, `arrays` by name) ->
    Instances."""
    arrays = arrays or {}

    def get(name: str) -> np.ndarray:
        return arrays[name] if name in arrays else result.as_numpy(name)

    n = int(get("num_instances").reshape(-1)[0])
    h, w = (int(v) for v in get("image_size").reshape(-1)[:2])
    counts = get("masks_rle").reshape(-1)[:n]
    rle = [{"size": [h, w], "counts": c.decode("ascii") if isinstance(c, bytes) else str(c)} for c in counts]
    inst = Instances(boxes=get("boxes").reshape(-1, 4)[:n].astype(np.float32),
                     scores=get("scores").reshape(-1)[:n].astype(np.float32),
                     classes=get("classes").reshape(-1)[:n].astype(np.int64),
                     rle=rle, image_size=(h, w), class_names=list(class_names))
    if mask_format == "bitmap":
        inst._masks = get("masks").reshape(-1, h, w)[:n].astype(bool)
    return inst


def _class_names(config: Any) -> list[str]:
    import json

    params = config.get("config", config).get("parameters", {}) if isinstance(config, dict) else {}
    raw = params.get("class_names", {}).get("string_value", "[]")
    try:
        return list(json.loads(raw))
    except ValueError:
        return []


def _max_detections(config: Any) -> int:
    """K of boxinst_net's padded outputs: the first dimension of its `boxes` output."""
    cfg = config.get("config", config) if isinstance(config, dict) else {}
    for out in cfg.get("output", []):
        if out.get("name") == "boxes":
            dims = [int(d) for d in out.get("dims", [])]
            if dims and dims[0] > 0:
                return dims[0]
    raise BoxInstError("boxinst_net's config gives no fixed number of detections (output 'boxes' dims [K, 4]): "
                       "cannot size the shared-memory outputs; export the model again or use shared_memory=False")


def _max_queue_size(config: Any) -> int | None:
    """max_queue_size of a model config's queue policy (Triton's JSON), None without one."""
    cfg = config.get("config", config) if isinstance(config, dict) else {}
    size = cfg.get("dynamic_batching", {}).get("default_queue_policy", {}).get("max_queue_size")
    return int(size) if size else None


def _deadline_args(timeout_s: float, deadline_ms: float | None) -> dict:
    """tritonclient infer() keywords for a request: client_timeout (the sooner of timeout_s and the
    deadline) and, with a deadline, Triton's `timeout` in microseconds (a queue drops the request
    once it is past it)."""
    if deadline_ms is None:
        return {"client_timeout": timeout_s}
    if deadline_ms <= 0:
        raise ValueError(f"deadline_ms must be > 0, got {deadline_ms}")
    return {"client_timeout": min(timeout_s, deadline_ms / 1000), "timeout": max(1, int(deadline_ms * 1000))}


def _pick_raw_model(ready: bool | Exception) -> str:
    """Whether the server has the one-process raw model ready (or the error asking gave) -> the
    model raw frames go to."""
    if isinstance(ready, Exception):
        err = _wrap(ready)
        if "unknown model" not in str(err).lower():
            raise err from ready
        ready = False
    return FUSED_RAW_MODEL if ready else RAW_MODEL


class BoxInstClient:
    """Blocking client. `segment_batch` sends its images concurrently (Triton batches them).

    arrays: how numpy frames travel: "raw" (default; uint8 as is, to `raw_model`) or "png"
    (encoded, to `model`). raw_model: None (default) picks `boxinst_raw_fused` where the server
    has it ready (CPU servers: the ensemble's steps in one process), else the `boxinst_raw`
    ensemble; asked once. shared_memory: frames in and fixed-size outputs out through system
    shared memory (the server must run on this host); regions are registered once per request
    slot and reused, and unregistered and unlinked by close() (or, if this process is killed, by
    the next client that opens shared memory). Paths and encoded bytes always go to `model` in
    the gRPC message. ssl, root_certificates, private_key, certificate_chain, api_key: a secured
    server (module docstring). retry_s: how long a request that failed because the server or one
    of its steps was down (restarting, a step being reloaded by `boxinst serve`'s supervisor) is
    retried, with backoff (0: never); a bad input is never retried, nor a refusal for a full
    queue (ServerBusy, raised at once). After a server restart the client registers its shared
    memory again and picks the raw-frame model again."""

    def __init__(self, url: str = "127.0.0.1:8001", model: str = ENSEMBLE_MODEL, timeout_s: float = 10.0,
                 max_workers: int = 8, raw_model: str | None = None, arrays: str = "raw",
                 shared_memory: bool = False, ssl: bool = False, root_certificates: str | os.PathLike | None = None,
                 private_key: str | os.PathLike | None = None, certificate_chain: str | os.PathLike | None = None,
                 api_key: str | None = None, retry_s: float = 15.0):
        import tritonclient.grpc as grpcclient

        tls = _tls_options(ssl, root_certificates, private_key, certificate_chain)
        if arrays not in ARRAY_MODES:
            raise ValueError(f"arrays must be one of {ARRAY_MODES}, got {arrays!r}")
        if shared_memory and arrays != "raw":
            raise ValueError("shared_memory=True sends raw frames: use arrays='raw'")
        self._grpc = grpcclient
        self.url, self.model, self._raw_model, self.timeout_s = url, model, raw_model, timeout_s
        self._raw_auto = raw_model is None
        self.retry_s, self.retried = retry_s, 0
        self._answered: set[str] = set()  # models that answered this client (retried when reloading)
        self.arrays = arrays
        # 64 MiB messages: bitmap masks of large images do not fit gRPC's 4 MiB default.
        opts = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
        self._client = grpcclient.InferenceServerClient(url, channel_args=opts, **tls)
        self.tls = bool(tls)
        self._api_key = resolve_api_key(api_key)
        if self._api_key is not None:
            self._client.register_plugin(ApiKeyPlugin(self._api_key))  # every call, shm.py's too
        self._pool = ThreadPoolExecutor(max_workers=max_workers)
        self._class_names: list[str] | None = None
        self._net_config: dict | None = None
        self._queue_sizes: dict[str, int | None] = {}
        self._local = threading.local()
        self._shm = None
        self._finalizer = None
        if shared_memory:
            self._open_shared_memory()

    def _config(self) -> dict:
        if self._net_config is None:
            try:
                self._net_config = self._client.get_model_config(NET_MODEL, as_json=True, client_timeout=self.timeout_s)
            except Exception as e:  # noqa: BLE001
                raise _wrap(e) from e
        return self._net_config

    @property
    def net_config(self) -> dict:
        """The served boxinst_net's model configuration as Triton's JSON ({"config": {...}}): its
        class names and settings (parameters written by export)."""
        return self._config()

    def _open_shared_memory(self) -> None:
        from boxinst_serve.client import shm

        try:
            shm.clean_stale(self._client, timeout_s=self.timeout_s)
        except Exception as e:  # noqa: BLE001
            self._client.close()
            raise _wrap(e) from e
        self._shm = shm.ShmPool(self._client, _max_detections(self._config()), self.timeout_s)
        self._finalizer = shm.make_finalizer(self, self._shm)
        try:  # register the first slot now: a server on another host fails here, not mid-stream
            self._shm.release(self._shm.acquire())
        except Exception as e:  # noqa: BLE001
            self.close()
            raise BoxInstError(f"could not register shared memory with the server at {self.url} (it must run on "
                               f"this host and see this /dev/shm): {_wrap(e)}") from e

    @property
    def raw_model(self) -> str:
        """The model numpy frames go to (see the class docstring)."""
        if self._raw_model is None:
            try:
                ready: bool | Exception = self._client.is_model_ready(FUSED_RAW_MODEL, client_timeout=self.timeout_s)
            except Exception as e:  # noqa: BLE001 - _pick_raw_model decides
                ready = e
            self._raw_model = _pick_raw_model(ready)
        return self._raw_model

    @property
    def headers(self) -> dict[str, str] | None:
        """The headers each call carries (the API key; None without one). The client adds them
        itself, also to calls made on its tritonclient (`_client`)."""
        return None if self._api_key is None else {GRPC_API_KEY_HEADER: self._api_key}

    @property
    def shared_memory_regions(self) -> list[str]:
        """Names of the regions this client has registered (empty without shared memory)."""
        return self._shm.names() if self._shm is not None else []

    @property
    def last_timing(self) -> dict[str, float]:
        """Seconds spent in the calling thread's last segment(): encode_s (PNG encoding, or copying
        the frame into the request / shared memory), infer_s (the gRPC call: transfer, queueing
        and the server's work), decode_s (response to Instances)."""
        return dict(getattr(self._local, "timing", {}))

    @property
    def class_names(self) -> list[str]:
        if self._class_names is None:
            self._class_names = _class_names(self._config())
        return self._class_names

    def is_ready(self) -> bool:
        try:
            return bool(self._client.is_server_ready(client_timeout=self.timeout_s)
                        and self._client.is_model_ready(self.model, client_timeout=self.timeout_s))
        except Exception:  # noqa: BLE001 - a dead server is simply not ready
            return False

    def _queue_size(self, model: str) -> int | None:
        """max_queue_size of the queue that refused a request to `model` (for an ensemble, whose
        steps hold the queues: boxinst_net's), asked once; None if unknown."""
        if model not in self._queue_sizes:
            try:
                cfg = self._client.get_model_config(model, as_json=True, client_timeout=self.timeout_s)
                if cfg.get("config", {}).get("platform") == "ensemble":
                    cfg = self._config()
                self._queue_sizes[model] = _max_queue_size(cfg)
            except Exception:  # noqa: BLE001 - the message goes without it
                self._queue_sizes[model] = None
        return self._queue_sizes[model]

    def _wrap_for(self, e: Exception, model: str, deadline_ms: float | None) -> BoxInstError:
        text = str(e)
        size = self._queue_size(model) if QUEUE_FULL in text else None
        return _wrap(e, model, size, deadline_ms)

    def _infer(self, model: str, inputs: list, outputs: list, deadline_ms: float | None = None):
        """One request; a transient failure (the server restarting, a step being brought back:
        is_transient) is retried with backoff for up to `retry_s` (and never past `deadline_ms`), a
        bad input or a full queue never."""
        started = time.monotonic()
        deadline = started + self.retry_s
        if deadline_ms is not None:
            deadline = min(deadline, started + deadline_ms / 1000)
        wait = 0.25
        while True:
            left_ms = None if deadline_ms is None else max(1.0, deadline_ms - 1000 * (time.monotonic() - started))
            try:
                result = self._client.infer(model, inputs, outputs=outputs, **_deadline_args(self.timeout_s, left_ms))
                self._answered.add(model)
                return result
            except Exception as e:  # noqa: BLE001 - tritonclient raises InferenceServerException
                err = self._wrap_for(e, model, deadline_ms)
                if is_transient(err, model in self._answered) and time.monotonic() + wait < deadline:
                    self.retried += 1
                    time.sleep(wait)
                    wait = min(2 * wait, 2.0)
                    model = self._reestablish(err, model)
                    continue
                if model == self._raw_model and "unknown model" in str(err):
                    raise BoxInstError(f"{err}: the server's repository has no '{model}' ensemble for raw frames "
                                       "(written before it existed?): run `boxinst export --triton REPOSITORY` again, "
                                       "which adds the ensembles a repository lacks, or use arrays='png'") from e
                raise err from e

    def _reestablish(self, err: BoxInstError, model: str) -> str:
        """What a restarted server forgot: this client's shared-memory registrations, and the
        model raw frames go to (picked again where it was the client's choice). -> the model to
        retry with."""
        text = str(err)
        if self._shm is not None and "shared memory region" in text:
            try:
                self._shm.register_again()
            except Exception:  # noqa: BLE001 - the server is not back yet: the next retry tries again
                pass
        if self._raw_auto and model == self._raw_model and "unknown model" in text:
            self._raw_model = None
            try:
                return self.raw_model
            except BoxInstError:
                return model
        return model

    def segment(self, image: ImageInput, mask_format: str = "rle", deadline_ms: float | None = None) -> Instances:
        """One image -> Instances at its original resolution (masks decoded lazily from RLE).
        A numpy frame must be RGB uint8 [H, W, 3] (see `arrays` and `shared_memory`).
        deadline_ms: the answer is worth nothing later: the server drops the request from its queue
        past it (up to the server's own deadline, `--queue-timeout-ms`) and the call gives up then
        (BoxInstTimeout); default: `timeout_s` only."""
        names = self.class_names
        t0 = time.perf_counter()
        if isinstance(image, np.ndarray) and self.arrays == "raw":
            frame = check_frame(image)
            if self._shm is not None:
                return self._segment_shm(frame, mask_format, names, t0, deadline_ms)
            inputs, outputs = _raw_request(self._grpc, frame, mask_format)
            model = self.raw_model
        else:
            inputs, outputs = _request(self._grpc, encode_input(image), mask_format)
            model = self.model
        t1 = time.perf_counter()
        result = self._infer(model, inputs, outputs, deadline_ms)
        t2 = time.perf_counter()
        inst = _instances(result, names, mask_format)
        self._local.timing = {"encode_s": t1 - t0, "infer_s": t2 - t1, "decode_s": time.perf_counter() - t2}
        return inst

    def _segment_shm(self, frame: np.ndarray, mask_format: str, names: list[str], t0: float,
                     deadline_ms: float | None = None) -> Instances:
        """The frame into the slot's input region, fixed-size outputs (and bitmaps) into its
        output regions, masks_rle in the gRPC response."""
        _check_mask_format(mask_format)
        g = self._grpc
        with self._shm.slot() as slot:
            region = slot.input_region(frame.nbytes)
            region.write(frame[None])
            image = g.InferInput("image", [1, *frame.shape], "UINT8").set_shared_memory(region.name, frame.nbytes)
            outputs = []
            out_region = slot.regions["output"]
            for name, (offset, size) in slot.layout.items():
                o = g.InferRequestedOutput(name)
                o.set_shared_memory(out_region.name, size, offset=offset)
                outputs.append(o)
            outputs.append(g.InferRequestedOutput("masks_rle"))
            masks_region = None
            if mask_format == "bitmap":
                masks_region = slot.masks_region(self._shm.max_detections * frame.shape[0] * frame.shape[1])
                o = g.InferRequestedOutput("masks")
                o.set_shared_memory(masks_region.name, masks_region.byte_size)
                outputs.append(o)
            t1 = time.perf_counter()
            result = self._infer(self.raw_model, [image, _mask_format_input(g, mask_format)], outputs, deadline_ms)
            t2 = time.perf_counter()
            arrays = {}
            dtypes = {"num_instances": np.int32, "image_size": np.int32, "boxes": np.float32, "scores": np.float32,
                      "classes": np.int32}
            for name, (offset, _) in slot.layout.items():
                arrays[name] = out_region.read(dtypes[name], list(result.get_output(name).shape), offset)
            if masks_region is not None:
                arrays["masks"] = masks_region.read(np.uint8, list(result.get_output("masks").shape))
        inst = _instances(result, names, mask_format, arrays)
        self._local.timing = {"encode_s": t1 - t0, "infer_s": t2 - t1, "decode_s": time.perf_counter() - t2}
        return inst

    def segment_batch(self, images: Sequence[ImageInput], mask_format: str = "rle",
                      deadline_ms: float | None = None) -> list[Instances]:
        """Several images, sent concurrently; results in input order. The first failure raises."""
        futures = [self._pool.submit(self.segment, im, mask_format, deadline_ms) for im in images]
        return [f.result() for f in futures]

    def close(self) -> None:
        """Unregisters and unlinks the shared memory (if any), closes the channel."""
        self._pool.shutdown(wait=False)
        if self._finalizer is not None:
            self._finalizer()  # ShmPool.close, once
        self._client.close()

    def __enter__(self) -> "BoxInstClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncBoxInstClient:
    """asyncio variant: `await client.segment(image)`, `await client.segment_batch(images)`.
    ssl, root_certificates, private_key, certificate_chain, api_key: as BoxInstClient. It does not
    retry a failed request (BoxInstClient does, `retry_s`): retry with your own event loop's timing."""

    def __init__(self, url: str = "127.0.0.1:8001", model: str = ENSEMBLE_MODEL, timeout_s: float = 10.0,
                 raw_model: str | None = None, arrays: str = "raw", ssl: bool = False,
                 root_certificates: str | os.PathLike | None = None, private_key: str | os.PathLike | None = None,
                 certificate_chain: str | os.PathLike | None = None, api_key: str | None = None):
        import tritonclient.grpc as grpcclient
        import tritonclient.grpc.aio as aioclient

        tls = _tls_options(ssl, root_certificates, private_key, certificate_chain)
        if arrays not in ARRAY_MODES:
            raise ValueError(f"arrays must be one of {ARRAY_MODES}, got {arrays!r}")
        self._grpc = grpcclient
        self.url, self.model, self.raw_model, self.timeout_s, self.arrays = url, model, raw_model, timeout_s, arrays
        opts = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
        self._client = aioclient.InferenceServerClient(url, channel_args=opts, **tls)
        self.tls = bool(tls)
        self._api_key = resolve_api_key(api_key)
        if self._api_key is not None:
            self._client.register_plugin(ApiKeyPlugin(self._api_key))
        self._class_names: list[str] | None = None

    async def class_names(self) -> list[str]:
        if self._class_names is None:
            try:
                cfg = await self._client.get_model_config(NET_MODEL, as_json=True, client_timeout=self.timeout_s)
            except Exception as e:  # noqa: BLE001
                raise _wrap(e) from e
            self._class_names = _class_names(cfg)
        return self._class_names

    async def _raw_model_name(self) -> str:
        """The model numpy frames go to, as BoxInstClient.raw_model."""
        if self.raw_model is None:
            try:
                ready: bool | Exception = await self._client.is_model_ready(FUSED_RAW_MODEL,
                                                                            client_timeout=self.timeout_s)
            except Exception as e:  # noqa: BLE001 - _pick_raw_model decides
                ready = e
            self.raw_model = _pick_raw_model(ready)
        return self.raw_model

    async def segment(self, image: ImageInput, mask_format: str = "rle", deadline_ms: float | None = None) -> Instances:
        """As BoxInstClient.segment (deadline_ms too); a full queue raises ServerBusy."""
        if isinstance(image, np.ndarray) and self.arrays == "raw":
            inputs, outputs = _raw_request(self._grpc, check_frame(image), mask_format)
            model = await self._raw_model_name()
        else:
            inputs, outputs = _request(self._grpc, encode_input(image), mask_format)
            model = self.model
        names = await self.class_names()
        try:
            result = await self._client.infer(model, inputs, outputs=outputs,
                                              **_deadline_args(self.timeout_s, deadline_ms))
        except Exception as e:  # noqa: BLE001
            raise _wrap(e, model, deadline_ms=deadline_ms) from e
        return _instances(result, names, mask_format)

    async def segment_batch(self, images: Sequence[ImageInput], mask_format: str = "rle",
                            deadline_ms: float | None = None) -> list[Instances]:
        return list(await asyncio.gather(*(self.segment(im, mask_format, deadline_ms) for im in images)))

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> "AsyncBoxInstClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
