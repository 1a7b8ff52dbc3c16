"""Decoding and input preparation shared by every inference path: colour layouts, bit depths,
EXIF orientation, the pixel limit, padding; and pasting masks back to the original size."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from boxinst_serve.postprocess import instances_for, paste_masks, to_instances
from boxinst_serve.preprocess import (ImageDecodeError, ImageMeta, decode_image, image_header_size, prepare_batch,
                                      prepare_for, read_image)
from tests.reference import reference_input


def _png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def test_colour_png_decodes_to_rgb():
    bgr = np.zeros((8, 10, 3), np.uint8)
    bgr[..., 2] = 200  # red in OpenCV's BGR order
    rgb = decode_image(_png(bgr))
    assert rgb.shape == (8, 10, 3) and rgb.dtype == np.uint8
    assert (rgb[..., 0] == 200).all() and (rgb[..., 2] == 0).all()


@pytest.mark.parametrize("image", [np.full((6, 7), 90, np.uint8),                    # grayscale
                                   np.full((6, 7, 4), 90, np.uint8),                 # BGRA
                                   np.full((6, 7, 3), 90 * 257, np.uint16)])        # 16-bit
def test_grayscale_rgba_and_16_bit_images_become_rgb_uint8(image):
    rgb = decode_image(_png(image))
    assert rgb.shape == (6, 7, 3) and rgb.dtype == np.uint8
    assert np.abs(rgb.astype(int) - 90).max() <= 1


def test_exif_orientation_is_applied():
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :20] = 255  # left half white
    ok, jpg = cv2.imencode(".jpg", img)
    data = bytearray(jpg.tobytes())
    # APP1 Exif segment with Orientation = 6 (rotate 90 degrees clockwise), big-endian TIFF.
    tiff = (b"MM\x00\x2a\x00\x00\x00\x08" + b"\x00\x01" + b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00"
            + b"\x00\x00\x00\x00")
    app1 = b"\xff\xe1" + (len(tiff) + 8).to_bytes(2, "big") + b"Exif\x00\x00" + tiff
    rotated = decode_image(bytes(data[:2]) + app1 + bytes(data[2:]))
    assert rotated.shape == (40, 20, 3)
    assert rotated[:20].mean() > 200 and rotated[20:].mean() < 50  # the white half is now on top


@pytest.mark.parametrize("data,message", [(b"", "empty"), (b"definitely not an image", "not a decodable image")])
def test_bad_bytes_are_clear_errors(data, message):
    with pytest.raises(ImageDecodeError, match=message):
        decode_image(data, source="upload")


def test_huge_png_header_is_refused_before_decoding():
    header = _png(np.zeros((4, 4, 3), np.uint8))
    fake = bytearray(header)
    fake[16:20] = (30000).to_bytes(4, "big")  # width
    fake[20:24] = (30000).to_bytes(4, "big")  # height
    assert image_header_size(bytes(fake)) == (30000, 30000)
    with pytest.raises(ImageDecodeError, match="30000x30000 px, over the 50 MP limit"):
        decode_image(bytes(fake))


def test_jpeg_header_size_is_read():
    ok, jpg = cv2.imencode(".jpg", np.zeros((33, 47, 3), np.uint8))
    assert image_header_size(jpg.tobytes()) == (33, 47)


def test_missing_file_error_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_image(tmp_path / "nope.png")


def test_prepare_batch_resizes_pads_and_records_sizes():
    images = [np.zeros((100, 200, 3), np.uint8), np.zeros((300, 150, 3), np.uint8)]
    batch, metas = prepare_batch(images, min_size=64, max_size=128)
    assert metas[0] == ImageMeta(orig_hw=(100, 200), resized_hw=(64, 128))
    assert metas[1] == ImageMeta(orig_hw=(300, 150), resized_hw=(128, 64))
    assert batch.shape == (2, 128, 128, 3) and batch.dtype == np.uint8


def test_prepare_batch_rejects_wrong_dtype():
    with pytest.raises(ValueError, match="RGB uint8"):
        prepare_batch([np.zeros((10, 10, 3), np.float32)], 32, 64)


def test_pasted_mask_lands_at_the_original_resolution():
    meta = ImageMeta(orig_hw=(50, 100), resized_hw=(32, 64))  # padded input 32x64 -> masks 8x16
    m = np.zeros((1, 8, 16), np.uint8)
    m[0, 2:6, 4:12] = 255  # input pixels 8..24 x 16..48 -> original 12.5..37.5 x 25..75
    pasted = paste_masks(m, meta)
    assert pasted.shape == (1, 50, 100)
    ys, xs = np.nonzero(pasted[0])
    assert abs(ys.min() - 12.5) <= 2 and abs(ys.max() - 37.5) <= 2
    assert abs(xs.min() - 25) <= 3 and abs(xs.max() - 75) <= 3


def test_to_instances_trims_to_num_detections_and_rescales_boxes():
    k = 3
    outputs = {"num_detections": np.array([1], np.int32),
               "boxes": np.array([[[8, 8, 24, 16], [0, 0, 0, 0], [0, 0, 0, 0]]], np.float32),
               "scores": np.array([[0.9, 0, 0]], np.float32), "classes": np.array([[2, 0, 0]], np.int32),
               "masks": np.zeros((1, k, 8, 16), np.uint8)}
    outputs["masks"][0, 0, 2:4, 2:6] = 255
    inst = to_instances(outputs, 0, ImageMeta((64, 128), (32, 64)), class_names=["a", "b", "c"])
    assert len(inst) == 1 and inst.class_name(0) == "c"
    np.testing.assert_allclose(inst.boxes[0], [16, 16, 48, 32])
    assert inst.masks.shape == (1, 64, 128) and inst.areas[0] == inst.masks[0].sum() > 0


def test_truncated_jpeg_is_refused_whatever_opencv_would_do():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    data = cv2.imencode(".jpg", img)[1].tobytes()
    for cut in (len(data) // 2, len(data) - 2):  # mid-scan, and only the end-of-image marker missing
        with pytest.raises(ImageDecodeError, match="truncated JPEG"):
            decode_image(data[:cut])
    assert decode_image(data + b"trailing bytes").shape == (120, 160, 3)


def _dense_reference(m: np.ndarray, meta: ImageMeta, stride: int = 4, threshold: float = 0.5) -> np.ndarray:
    """SPEC's steps done densely, pixel by pixel: aligned-bilinear sample of the stride-s map at
    the composite coordinate of every original pixel, then threshold."""
    oh, ow = meta.orig_hw
    rh, rw = meta.resized_hw
    ys = np.clip(((np.arange(oh) + 0.5) * rh / oh - 0.5) / stride - 0.5, 0, m.shape[0] - 1)
    xs = np.clip(((np.arange(ow) + 0.5) * rw / ow - 0.5) / stride - 0.5, 0, m.shape[1] - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, m.shape[0] - 1), np.minimum(x0 + 1, m.shape[1] - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    mf = m.astype(np.float64)
    v = (mf[y0][:, x0] * (1 - fy) * (1 - fx) + mf[y0][:, x1] * (1 - fy) * fx
         + mf[y1][:, x0] * fy * (1 - fx) + mf[y1][:, x1] * fy * fx)
    return v > threshold * 255


@pytest.mark.parametrize("orig,resized", [((50, 100), (32, 64)), ((480, 640), (384, 512)), ((97, 61), (128, 80)),
                                          ((64, 64), (64, 64))])
def test_roi_paste_and_rle_equal_the_dense_computation(orig, resized):
    from pycocotools import mask as mask_utils

    from boxinst_serve.postprocess import encode_rois, paste_mask_rois

    rng = np.random.default_rng(1)
    meta = ImageMeta(orig_hw=orig, resized_hw=resized)
    hs, ws = -(-resized[0] // 32) * 8, -(-resized[1] // 32) * 8  # padded input / 4
    masks = np.zeros((6, hs, ws), np.uint8)
    masks[0, 1:3, 2:5] = 200  # small blob
    masks[1] = 255  # everything, touching every border (runs cross columns)
    masks[2, :, 0] = 255  # a full-height column at the left edge
    masks[3] = (rng.random((hs, ws)) * 255).astype(np.uint8)  # noise, many runs
    masks[4, -2:, -3:] = 130  # corner at the bottom right, just over the threshold
    # masks[5] stays empty
    rois = paste_mask_rois(masks, meta)
    rles = encode_rois(rois, *orig)
    dense = mask_utils.decode([{"size": r["size"], "counts": r["counts"].encode()} for r in rles]).transpose(2, 0, 1)
    for i in range(len(masks)):
        want = _dense_reference(masks[i], meta)
        np.testing.assert_array_equal(dense[i].astype(bool), want, err_msg=f"mask {i}")
        assert rles[i]["counts"] == mask_utils.encode(np.asfortranarray(want.astype(np.uint8)))["counts"].decode()
    assert dense[5].sum() == 0 and dense[1].all()


def _adelaidet_like():
    from boxinst_serve.config import r50_fpn

    return r50_fpn().replace(pad_with_mean=True, resize="detectron2", pixel_mean=(123.675, 116.28, 103.53),
                             remove_empty_boxes=True)


def test_detectron2_sizes_round_half_up_after_its_two_step_arithmetic():
    from boxinst_serve.config import resized_shape

    # every exact 1:2 image: detectron2 gives 667 x 1333, one rounding of the scale gives 666
    assert resized_shape(500, 1000, 800, 1333, "detectron2") == (667, 1333)
    assert resized_shape(500, 1000, 800, 1333, "opencv") == (666, 1333)
    assert resized_shape(300, 640, 800, 1333, "detectron2") == (625, 1333)
    with pytest.raises(ValueError, match="resize mode"):
        resized_shape(1, 1, 800, 1333, "bicubic")


def test_detectron2_resize_is_pils_antialiased_bilinear():
    from PIL import Image

    from boxinst_serve.preprocess import resize_image

    img = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    got = resize_image(img, 40, 1333, "detectron2")  # shrinking: PIL antialiases, cv2 would alias
    assert np.array_equal(got, np.asarray(Image.fromarray(img).resize((53, 40), Image.BILINEAR)))


def test_mean_padding_fills_every_padded_pixel_on_every_path():
    from boxinst_serve.serving import prepare_one

    cfg = _adelaidet_like()
    img = np.full((300, 640, 3), 7, dtype=np.uint8)
    in_process, metas = prepare_for(cfg, [img])
    served, meta = prepare_one(img, cfg)  # the Triton pre-processing steps
    for batch, m in ((in_process, metas[0]), (served, meta)):
        rh, rw = m.resized_hw
        assert batch.shape == (1, 640, 1344, 3) and m == ImageMeta((300, 640), (625, 1333))
        assert (batch[0, rh:] == (124, 116, 104)).all() and (batch[0, :, rw:] == (124, 116, 104)).all()
        assert (batch[0, :rh, :rw] == 7).all()


def test_served_preprocessing_pads_each_image_to_its_own_size_only():
    """Landscape, portrait and capped-wide images: each padded to its own multiple of the
    divisibility, as prepare_for pads a single image (a fixed canvas changed GroupNorm's statistics
    and with them the scores)."""
    from boxinst_serve.config import lite
    from boxinst_serve.serving import prepare_one

    cfg = lite().replace(min_size_test=256, max_size_test=448)
    rng = np.random.default_rng(0)
    for hw, resized, padded in (((256, 256), (256, 256), (256, 256)), ((240, 320), (256, 341), (256, 352)),
                                ((320, 240), (341, 256), (352, 256)), ((100, 1000), (45, 448), (64, 448))):
        img = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
        served, meta = prepare_one(img, cfg)
        assert served.shape == (1, *padded, 3) and meta == ImageMeta(hw, resized), (hw, served.shape, meta)
        want, want_hw = reference_input(img, cfg)  # resized and padded in the test, from cfg's numbers
        assert want_hw == resized
        np.testing.assert_array_equal(served, want)
    with pytest.raises(ValueError, match="expected an RGB uint8"):
        prepare_one(np.zeros((8, 8), np.uint8), cfg)


@pytest.mark.parametrize("hw", [(97, 61), (128, 128), (300, 640), (481, 333), (40, 900)])
@pytest.mark.parametrize("adelaidet", [False, True])
def test_prepare_for_equals_a_resize_and_pad_written_from_the_configs_numbers(hw, adelaidet):
    """tests/reference.py resizes (cv2 or PIL, per the resize mode) and pads (to its own size
    rounded up to the divisibility, black or the mean colour) without the product's code."""
    from boxinst_serve.config import lite

    cfg = _adelaidet_like() if adelaidet else lite().replace(min_size_test=128, max_size_test=160)
    img = np.random.default_rng(hw[0]).integers(0, 256, (*hw, 3), dtype=np.uint8)
    batch, metas = prepare_for(cfg, [img])
    want, resized = reference_input(img, cfg)
    assert metas[0] == ImageMeta(hw, resized)
    np.testing.assert_array_equal(batch, want)


def test_boxes_empty_after_clipping_are_dropped_where_the_config_says():
    outputs = {"num_detections": np.array([2]), "scores": np.array([[0.9, 0.8]], np.float32),
               "classes": np.array([[1, 2]], np.int32), "masks": np.zeros((1, 2, 8, 16), np.uint8),
               "boxes": np.array([[[4, 4, 20, 20], [70, 4, 90, 20]]], np.float32)}  # 2nd lies right of the image
    meta = ImageMeta((32, 64), (32, 64))
    assert len(to_instances(outputs, 0, meta)) == 2
    kept = instances_for(_adelaidet_like(), outputs, 0, meta)
    assert len(kept) == 1 and kept.classes.tolist() == [1] and len(kept.rle) == 1


def test_model_parameters_as_the_cpu_steps_read_them():
    from boxinst_serve.serving import max_pixels_parameter, model_parameters, onnxruntime_settings

    config = {"parameters": {"intra_op_threads": {"string_value": "3"}, "intra_op_spinning": {"string_value": "0"},
                             "max_pixels": {"string_value": "0"}}}
    params = model_parameters(config)
    assert params == {"intra_op_threads": "3", "intra_op_spinning": "0", "max_pixels": "0"}
    assert onnxruntime_settings(params) == {"threads": 3, "spinning": False}
    assert max_pixels_parameter(params) is None  # 0: the serving config's limit
    assert max_pixels_parameter({"max_pixels": "1000"}) == 1000
    assert onnxruntime_settings(model_parameters({})) == {"threads": 0, "spinning": True}  # ONNX Runtime's defaults
    assert onnxruntime_settings({"intra_op_spinning": "false"})["spinning"] is False


def test_a_repository_exported_with_the_canvas_is_refused_with_what_to_do(tmp_path):
    """Repositories of contract version 1 letterboxed onto a canvas (their answers differ from the
    model's): the steps refuse to load them rather than keep answering wrongly."""
    import json

    from boxinst_serve.config import CONTRACT_VERSION, lite
    from boxinst_serve.serving import ServingConfig

    net = tmp_path / "boxinst_net"
    net.mkdir()
    (net / "boxinst_serving.json").write_text(json.dumps(
        {"model_config": lite().to_dict(), "canvas": [256, 448], "max_pixels": 1000, "contract_version": "1"}))
    with pytest.raises(ValueError, match="contract version 1, this runtime speaks 2: export the model again"):
        ServingConfig.load(tmp_path)
    assert CONTRACT_VERSION == "2"
    ServingConfig(lite()).save(net)
    assert ServingConfig.load(tmp_path).model.min_size_test == lite().min_size_test
