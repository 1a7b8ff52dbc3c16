"""The one-process raw-frame model without a server (the server-side tests are in
tests/test_serving.py): FramePipeline runs the ensemble's three steps, the outputs are the
ensemble's, the `cpu` export writes the model with the ensemble's inputs and outputs and the GPU
flavours remove it, and the client picks it only where the server has it."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from boxinst_serve.protocol import FUSED_RAW_MODEL, RAW_MODEL
from boxinst_serve.serving.fused import FramePipeline
from boxinst_serve.postprocess import instances_for
from boxinst_serve.results import Instances
from boxinst_serve.preprocess import prepare_for
from boxinst_serve.serving import ServingConfig, instance_outputs, meta_from_array, meta_to_array

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def repo(trained_lite, lite_onnx, tmp_path_factory) -> Path:
    """A copy of model_repository/ with a `cpu` export of the tests' lite model."""
    from export.triton import write_triton_net

    repo = tmp_path_factory.mktemp("fused") / "model_repository"
    shutil.copytree(ROOT / "model_repository", repo, ignore=shutil.ignore_patterns("boxinst_net", ".boxinst_*",
                                                                                   FUSED_RAW_MODEL))
    write_triton_net(trained_lite, repo, flavour="cpu", onnx_path=lite_onnx)
    return repo


def _frame(tiny_shapes) -> np.ndarray:
    from boxinst_serve.preprocess import read_image

    return read_image(sorted(Path(tiny_shapes["images"]).glob("*.png"))[0])


def test_pipeline_gives_what_the_model_gives_on_the_single_frame(repo, lite_onnx, tiny_shapes):
    """The pipeline against the in-process model on the same single frame (load_engine, prepare_for,
    instances_for, with the meta through the steps' int32 tensor): the square frame, its mirror, a
    landscape crop and a portrait transpose (own-size padding: no canvas), and a [1, H, W, 3] frame."""
    from boxinst_serve.engines import load_engine

    pipeline = FramePipeline.from_repository(repo)
    engine = load_engine(lite_onnx)
    cfg = engine.config
    frame = _frame(tiny_shapes)
    landscape = np.ascontiguousarray(frame[16:112])
    for f in (frame, frame[:, ::-1], landscape, landscape.transpose(1, 0, 2), frame[None]):
        single = f[0] if f.ndim == 4 else f
        batch, metas = prepare_for(cfg, [np.ascontiguousarray(single)])
        want = instances_for(cfg, engine(batch), 0, meta_from_array(meta_to_array(metas[0])))
        got, parts = pipeline.timed(f)
        assert len(got) == len(want) > 0 and got.image_size == want.image_size == single.shape[:2]
        np.testing.assert_array_equal(got.boxes, want.boxes)
        np.testing.assert_array_equal(got.scores, want.scores)
        np.testing.assert_array_equal(got.classes, want.classes)
        assert [r["counts"] for r in got.rle] == [r["counts"] for r in want.rle]
        assert all(m.any() for m in got.masks)  # equal and not vacuously so
        assert set(parts) == {"pre", "network", "post"} and all(v > 0 for v in parts.values())


def test_pipeline_refuses_bad_frames_with_check_frames_words(repo, tiny_shapes):
    pipeline = FramePipeline.from_repository(repo, max_pixels=200 * 200)
    for frame, message in ((np.zeros((50, 60, 4), np.uint8), "3 channels .* got 4"),
                           (np.zeros((50, 60, 3), np.float32), "got dtype float32"),
                           (np.zeros((2, 50, 60, 3), np.uint8), "one frame per request, got a batch of 2"),
                           (np.zeros((201, 200, 3), np.uint8), "over the 0.04 MP limit")):
        with pytest.raises(ValueError, match=message):
            pipeline(frame)
    assert len(pipeline(_frame(tiny_shapes))) > 0
    assert FramePipeline.from_repository(repo).max_pixels is None  # the serving default applies
    small = ServingConfig(pipeline.serving.model, max_pixels=40_000)
    with pytest.raises(ValueError, match="over the 0.04 MP limit"):  # the serving default, when not overridden
        FramePipeline(small, pipeline.engine)(np.zeros((201, 200, 3), np.uint8))


def test_pipeline_needs_the_onnx_graph_of_a_cpu_export(repo, tmp_path):
    other = tmp_path / "repo"
    shutil.copytree(repo, other)
    (other / "boxinst_net" / "1" / "model.onnx").unlink()
    with pytest.raises(FileNotFoundError, match="model.onnx' is missing: .*--flavour cpu"):
        FramePipeline.from_repository(other)


@pytest.mark.parametrize("mask_format", ["rle", "bitmap"])
def test_instance_outputs_are_the_served_outputs(mask_format):
    masks = np.zeros((2, 6, 8), bool)
    masks[0, 1:3, 2:5] = True
    masks[1, 4:, :2] = True
    from pycocotools import mask as mask_utils

    rle = [{"size": [6, 8], "counts": r["counts"].decode("ascii")}
           for r in mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))]
    inst = Instances(boxes=np.array([[2, 1, 5, 3], [0, 4, 2, 6]], np.float32), scores=np.array([0.9, 0.5], np.float32),
                     classes=np.array([3, 1]), rle=rle, image_size=(6, 8), class_names=[])
    out = instance_outputs(inst, mask_format)
    assert {k: (v.dtype.kind, v.shape) for k, v in out.items()} == {
        "num_instances": ("i", (1, 1)), "boxes": ("f", (1, 2, 4)), "scores": ("f", (1, 2)), "classes": ("i", (1, 2)),
        "masks_rle": ("O", (1, 2)), "image_size": ("i", (1, 2)),
        "masks": ("u", (1, 2, 6, 8) if mask_format == "bitmap" else (1, 0, 0, 0))}
    assert out["num_instances"][0, 0] == 2 and out["image_size"].tolist() == [[6, 8]]
    assert [c.decode() for c in out["masks_rle"][0]] == [r["counts"] for r in rle]
    if mask_format == "bitmap":
        np.testing.assert_array_equal(out["masks"][0], masks.astype(np.uint8))
    empty = instance_outputs(Instances(boxes=np.zeros((0, 4), np.float32), scores=np.zeros(0, np.float32),
                                       classes=np.zeros(0, np.int64), rle=[], image_size=(6, 8), class_names=[]),
                             mask_format)
    assert empty["boxes"].shape == (1, 0, 4) and empty["masks_rle"].shape == (1, 0)


def test_cpu_export_writes_the_model_with_the_ensembles_inputs_and_outputs_and_gpu_flavours_remove_it(
        repo, trained_lite, lite_onnx, tmp_path):
    text_format = pytest.importorskip("google.protobuf.text_format")
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from export.triton import write_triton_net

    def parse(path: Path):
        return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())

    fused = parse(repo / FUSED_RAW_MODEL / "config.pbtxt")
    ensemble = parse(ROOT / "model_repository" / RAW_MODEL / "config.pbtxt")
    assert fused.name == FUSED_RAW_MODEL and fused.backend == "python"
    assert list(fused.input) == list(ensemble.input) and list(fused.output) == list(ensemble.output)
    assert fused.max_batch_size == ensemble.max_batch_size
    params = {k: v.string_value for k, v in fused.parameters.items()}
    net = {k: v.string_value for k, v in parse(repo / "boxinst_net" / "config.pbtxt").parameters.items()}
    assert params["max_pixels"] == "0"
    assert (params["intra_op_threads"], params["intra_op_spinning"]) == (net["intra_op_threads"],
                                                                         net["intra_op_spinning"]) == ("0", "0")
    assert (repo / FUSED_RAW_MODEL / "1" / "model.py").is_file() and not list(repo.glob(f".{FUSED_RAW_MODEL}*"))

    gpu = tmp_path / "gpu"
    shutil.copytree(repo, gpu)
    write_triton_net(trained_lite, gpu, flavour="onnxruntime", onnx_path=lite_onnx)
    assert not (gpu / FUSED_RAW_MODEL).exists() and (gpu / RAW_MODEL / "config.pbtxt").is_file()


def test_client_sends_raw_frames_to_the_fused_model_only_where_the_server_has_it():
    pytest.importorskip("tritonclient.grpc")
    from tritonclient.utils import InferenceServerException

    from boxinst_serve.client.grpc_client import BoxInstError, _pick_raw_model

    assert _pick_raw_model(True) == FUSED_RAW_MODEL
    assert _pick_raw_model(False) == RAW_MODEL
    assert _pick_raw_model(InferenceServerException("Request for unknown model: 'boxinst_raw_fused' is not found")) \
        == RAW_MODEL
    with pytest.raises(BoxInstError, match="failed to connect"):
        _pick_raw_model(InferenceServerException("failed to connect to all addresses"))
