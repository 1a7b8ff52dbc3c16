"""An independent reference for a served (or in-process) model: the torch model of the checkpoint
on each single image, with pre- and post-processing written here from the algorithm (the
project's SPEC.md, beside the repository) and docs/architecture.md's contracts.

The served answers go through the Triton steps (boxinst_serve/serving/steps.py), which call
`prepare_for` and `instances_for`; a reference built from those functions agrees with the server
whatever they do, and only catches transport bugs. This one shares no code with them:

- Shared with the product path: the trained network only (the CondInst of the checkpoint, built
  by `boxinst_serve.checkpoint.load_model`, and its decoding to the network contract,
  `boxinst_serve.model.detect.InferenceModel`: the graph that export/ writes to ONNX), the
  ModelConfig's numbers (test sizes, size divisibility, padding colour, resize mode, mask stride
  and threshold, empty-box removal), and the `Instances` dataclass that holds the answer.
- Not shared: decoding (PIL here, OpenCV in boxinst_serve/preprocess.py), the resize size
  arithmetic and padding (`resized_shape`, `padded_size`, `pad_value`, `prepare_batch`,
  `prepare_for`), the engine (torch here; ONNX Runtime in the server), box rescaling, mask pasting
  and thresholding (`paste_mask_rois`, `to_instances`, `instances_for`) and RLE encoding (the
  product's own run-length code; pycocotools encodes the dense masks here).
- OnnxReference, for a graph the torch model cannot stand for (the INT8 graph), shares that graph
  and ONNX Runtime with the server, on a plain InferenceSession (not boxinst_serve's engine).

Pre-processing (docs/architecture.md, "Contracts": network and Triton repository): the shorter side
scaled to min_size_test with the longer side capped at max_size_test (one scale; "opencv" mode:
cv2 INTER_LINEAR, sizes rounded half to even; "detectron2" mode: detectron2's two-step
arithmetic, then PIL bilinear), padded bottom/right to its own size rounded up to the size
divisibility, nothing more, with black or the rounded mean colour.
Post-processing (SPEC.md, "Inference"; AdelaiDet's CondInst postprocess, done densely): boxes
scaled to the original size and clipped to it; masks: the stride-4 uint8 probability
aligned-bilinear upsampled to the padded input size, cropped to the resized image, resized to
the original size (bilinear, half-pixel), thresholded at 0.5.
"""
from __future__ import annotations

import io
import os

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from boxinst_serve.config import ModelConfig
from boxinst_serve.results import Instances


def decode_rgb(data: bytes) -> np.ndarray:
    """Encoded PNG/JPEG bytes -> RGB uint8 [H, W, 3] with PIL (EXIF orientation applied; alpha
    dropped, gray replicated; 16-bit gray scaled by 1/257 and rounded, 16-bit colour cut to its
    high byte by PIL: the same where the samples are multiples of 257, as in the tests)."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            a = np.asarray(im, dtype=np.float64)
            a = np.clip(np.floor(a / 257.0 + 0.5), 0, 255).astype(np.uint8)
            return np.repeat(a[..., None], 3, axis=2)
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def reference_size(h: int, w: int, cfg: ModelConfig) -> tuple[int, int]:
    """(h, w) after the test-time resize of `cfg`, from its documented arithmetic."""
    short, long_ = min(h, w), max(h, w)
    if cfg.resize == "detectron2":  # ResizeShortestEdge.get_output_shape
        s = cfg.min_size_test / short
        nh, nw = (cfg.min_size_test, s * w) if h < w else (s * h, cfg.min_size_test)
        if max(nh, nw) > cfg.max_size_test:
            c = cfg.max_size_test / max(nh, nw)
            nh, nw = nh * c, nw * c
        return int(nh + 0.5), int(nw + 0.5)
    scale = min(cfg.min_size_test / short, cfg.max_size_test / long_)
    return round(h * scale), round(w * scale)


def reference_input(image: np.ndarray, cfg: ModelConfig) -> tuple[np.ndarray, tuple[int, int]]:
    """RGB uint8 [H, W, 3] -> (network input uint8 [1, Hp, Wp, 3], resized (h, w)): resized per
    `cfg`, padded bottom/right to its own size rounded up to the size divisibility."""
    h, w = image.shape[:2]
    rh, rw = reference_size(h, w, cfg)
    if (rh, rw) == (h, w):
        resized = image
    elif cfg.resize == "detectron2":
        from PIL import Image

        resized = np.asarray(Image.fromarray(image).resize((rw, rh), Image.BILINEAR))
    else:
        resized = cv2.resize(image, (rw, rh), interpolation=cv2.INTER_LINEAR)
    d = cfg.size_divisibility
    hp, wp = -(-rh // d) * d, -(-rw // d) * d
    colour = [int(np.floor(m + 0.5)) for m in cfg.pixel_mean] if cfg.pad_with_mean else [0, 0, 0]
    canvas = np.empty((1, hp, wp, 3), np.uint8)
    canvas[:] = np.array(colour, np.uint8)
    canvas[0, :rh, :rw] = resized
    return canvas, (rh, rw)


def aligned_bilinear(x: torch.Tensor, factor: int) -> torch.Tensor:
    """AdelaiDet's aligned_bilinear (adet/utils/comm.py): [N, C, h, w] -> [N, C, h*f, w*f]."""
    if factor == 1:
        return x
    h, w = x.shape[2:]
    x = F.pad(x, (0, 1, 0, 1), mode="replicate")
    x = F.interpolate(x, size=(factor * h + 1, factor * w + 1), mode="bilinear", align_corners=True)
    x = F.pad(x, (factor // 2, 0, factor // 2, 0), mode="replicate")
    return x[:, :, :factor * h, :factor * w]


def reference_instances(outputs: dict[str, np.ndarray], cfg: ModelConfig, orig_hw: tuple[int, int],
                        resized_hw: tuple[int, int]) -> Instances:
    """Contract outputs of one image (batch of 1) -> Instances at the original resolution, densely."""
    from pycocotools import mask as mask_utils

    n = int(outputs["num_detections"][0])
    (oh, ow), (rh, rw) = orig_hw, resized_hw
    boxes = outputs["boxes"][0, :n].astype(np.float64) * np.array([ow / rw, oh / rh, ow / rw, oh / rh])
    boxes = np.clip(boxes, 0, np.array([ow, oh, ow, oh], np.float64)).astype(np.float32)
    keep = np.arange(n)
    if cfg.remove_empty_boxes:
        keep = keep[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
    probs = torch.from_numpy(outputs["masks"][0, keep].astype(np.float32) / 255.0)[:, None]  # [N, 1, hs, ws]
    if len(keep):
        up = aligned_bilinear(probs.double(), cfg.mask_out_stride)[:, :, :rh, :rw]  # padded input, cropped
        masks = (F.interpolate(up, size=(oh, ow), mode="bilinear", align_corners=False)[:, 0]
                 > cfg.mask_threshold).numpy()
    else:
        masks = np.zeros((0, oh, ow), bool)
    encoded = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8))) if len(keep) else []
    rle = [{"size": [oh, ow], "counts": r["counts"].decode("ascii")} for r in encoded]
    return Instances(boxes=boxes[keep], scores=outputs["scores"][0, keep].astype(np.float32),
                     classes=outputs["classes"][0, keep].astype(np.int64), rle=rle, image_size=(oh, ow),
                     class_names=list(cfg.class_names), _masks=masks)


class Reference:
    """reference(image) -> Instances: `net` (uint8 [1, Hp, Wp, 3] -> the contract's outputs as
    numpy) on the single image, pre- and post-processed as this module's docstring says.
    image: encoded bytes or RGB uint8 [H, W, 3]."""

    def __init__(self, net, config: ModelConfig):
        self.net, self.config = net, config

    def __call__(self, image: bytes | np.ndarray) -> Instances:
        image = decode_rgb(image) if isinstance(image, (bytes, bytearray)) else image
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, (image.dtype, image.shape)
        batch, resized_hw = reference_input(image, self.config)
        return reference_instances(self.net(batch), self.config, image.shape[:2], resized_hw)


OUTPUTS = ("num_detections", "boxes", "scores", "classes", "masks")  # docs/architecture.md, the network contract


class TorchReference(Reference):
    """The checkpoint's torch model (CondInst and its decoding), on the CPU."""

    def __init__(self, checkpoint: str | os.PathLike):
        from boxinst_serve.checkpoint import load_model
        from boxinst_serve.model.detect import InferenceModel

        model = InferenceModel(load_model(checkpoint)).eval()

        @torch.inference_mode()
        def net(batch: np.ndarray) -> dict[str, np.ndarray]:
            return {k: t.numpy() for k, t in zip(OUTPUTS, model(torch.from_numpy(batch)))}

        super().__init__(net, model.cfg)


class OnnxReference(Reference):
    """An ONNX graph on a plain onnxruntime.InferenceSession (not the product's engine), e.g. the
    INT8 graph a server runs, whose answers the fp32 torch model cannot reproduce; the config is
    the checkpoint's it was exported from."""

    def __init__(self, onnx_path: str | os.PathLike, checkpoint: str | os.PathLike):
        import onnxruntime as ort

        from boxinst_serve.checkpoint import load_checkpoint

        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def net(batch: np.ndarray) -> dict[str, np.ndarray]:
            return dict(zip(OUTPUTS, session.run(list(OUTPUTS), {name: batch})))

        super().__init__(net, load_checkpoint(checkpoint)["model_config"])
