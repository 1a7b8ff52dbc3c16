"""OpenVINO as an engine: the exported model.onnx run as it is, and the IR of `boxinst export
--format openvino`, give what ONNX Runtime gives on the trained lite model (batch 2, two input
sizes, one engine each: dynamic shapes) and what AdelaiDet gives on the oracle's photos (which skip,
saying why, where ../shared is absent, as tests/test_adelaidet.py's do); the engine is chosen by
suffix or by name, and the IR carries the ONNX export's metadata."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino", reason="the openvino extra (`pip install 'boxinst-serve[openvino]'`)")

from boxinst_serve.config import CONTRACT_VERSION  # noqa: E402
from boxinst_serve.engines import load_engine  # noqa: E402
from tests.parity import BOX_TOL_PX, MIN_MASK_IOU, NOISE, ORACLE_IMAGES, SCORE_TOL, Detections, compare  # noqa: E402
from tests.test_adelaidet import _check_parity  # noqa: E402


@pytest.fixture(scope="module")
def lite_ir(trained_lite, lite_onnx, tmp_path_factory) -> Path:
    """The session's lite ONNX export converted by `boxinst export --format openvino --onnx`."""
    from boxinst_serve.cli import main

    out = tmp_path_factory.mktemp("lite_ir")
    assert main(["export", "--checkpoint", str(trained_lite), "--format", "openvino", "--onnx", str(lite_onnx),
                 "--out", str(out)]) == 0
    return out / "model.xml"


@pytest.fixture(scope="module")
def engines(lite_onnx, lite_ir) -> dict:
    """ONNX Runtime (the reference), OpenVINO on the .onnx file and on the IR: one instance each."""
    return {"onnxruntime": load_engine(lite_onnx), "openvino onnx": load_engine(lite_onnx, engine="openvino"),
            "openvino ir": load_engine(lite_ir)}


def _val_images(tiny_shapes, n: int = 2) -> list[np.ndarray]:
    from boxinst_serve.preprocess import read_image

    images = json.loads(Path(tiny_shapes["val"]).read_text())["images"]
    return [read_image(Path(tiny_shapes["images"]) / im["file_name"]) for im in images[:n]]


def _detections(cfg, outputs: dict, metas) -> list[Detections]:
    from boxinst_serve.postprocess import instances_for

    return [Detections(i.boxes, i.scores, i.classes, i.masks)
            for i in (instances_for(cfg, outputs, k, meta) for k, meta in enumerate(metas))]


# test sizes (short side, max side): the model's own, 128 -> 128x128 inputs, and 224 -> 224x224
@pytest.mark.parametrize("test_size", [(128, 160), (224, 288)])
@pytest.mark.parametrize("which", ["openvino onnx", "openvino ir"])
def test_openvino_gives_what_onnxruntime_gives(engines, tiny_shapes, which, test_size):
    from boxinst_serve.preprocess import prepare_for

    reference, engine = engines["onnxruntime"], engines[which]
    cfg = reference.config.replace(min_size_test=test_size[0], max_size_test=test_size[1])
    batch, metas = prepare_for(cfg, _val_images(tiny_shapes))
    assert batch.shape[0] == 2 and batch.shape[1] == test_size[0]
    want, got = reference(batch), engine(batch)
    assert {k: (v.dtype, v.shape) for k, v in got.items()} == {k: (v.dtype, v.shape) for k, v in want.items()}
    assert got["num_detections"].tolist() == want["num_detections"].tolist()
    assert want["num_detections"].min() > 0, "the trained model should detect something in every image"
    rows = [(k, slice(0, int(n))) for k, n in enumerate(want["num_detections"])]
    box_diff = max(float(np.abs(got["boxes"][k, r] - want["boxes"][k, r]).max()) for k, r in rows)
    score_diff = max(float(np.abs(got["scores"][k, r] - want["scores"][k, r]).max()) for k, r in rows)
    mask_diff = max(int(np.abs(got["masks"][k, r].astype(int) - want["masks"][k, r]).max()) for k, r in rows)
    print(f"{which} {batch.shape[1]}x{batch.shape[2]}: max abs diff boxes {box_diff:.2e} px, scores {score_diff:.2e}, "
          f"masks {mask_diff}/255")
    for k, (exp, act) in enumerate(zip(_detections(cfg, want, metas), _detections(cfg, got, metas))):
        report = compare(exp, act, box_tol=BOX_TOL_PX, score_tol=SCORE_TOL, min_mask_iou=MIN_MASK_IOU,
                         score_floor=cfg.score_thresh ** 0.5, cap=cfg.max_detections, noise=NOISE, ties=True)
        print(f"{which} image {k}: {report.describe()}")
        assert report.ok, report.failures
        assert report.nonempty_masks > 0


def test_the_ir_carries_the_onnx_exports_metadata(engines, lite_ir):
    import openvino as ov

    from boxinst_serve.engines.openvino_engine import shared_core

    ir, onnxruntime = engines["openvino ir"], engines["onnxruntime"]
    assert ir.config == onnxruntime.config
    assert ir.class_names == onnxruntime.class_names == list(ir.config.class_names)
    assert ir.contract_version == CONTRACT_VERSION
    model = shared_core().read_model(str(lite_ir))
    assert model.get_rt_info(["boxinst", "producer"]).astype(str) == "boxinst-serve"
    # fp32 weights: OpenVINO's default fp16 compression was turned off
    assert not any(op.get_output_element_type(0) == ov.Type.f16 for op in model.get_ops())
    # written atomically: nothing but the IR (and the ONNX graph it came from, elsewhere) in its folder
    assert sorted(p.name for p in lite_ir.parent.iterdir()) == ["model.bin", "model.xml"]


def test_the_engine_follows_the_suffix_unless_named(engines, trained_lite, lite_onnx, lite_ir):
    from boxinst_serve.engines import engine_for
    from boxinst_serve.engines.onnxruntime_engine import OnnxRuntimeEngine
    from boxinst_serve.engines.openvino_engine import OpenVINOEngine
    from boxinst_serve.predictor import Predictor

    assert isinstance(engines["onnxruntime"], OnnxRuntimeEngine)
    assert isinstance(engines["openvino onnx"], OpenVINOEngine) and isinstance(engines["openvino ir"], OpenVINOEngine)
    assert isinstance(Predictor.load(lite_onnx, engine="openvino").engine, OpenVINOEngine)
    assert [engine_for(p) for p in (trained_lite, lite_onnx, lite_ir, "m.plan")] == [
        "torch", "onnxruntime", "openvino", "tensorrt"]
    threaded = load_engine(lite_ir, threads=1)
    assert threaded.compiled.get_property("INFERENCE_NUM_THREADS") == 1


@pytest.mark.parametrize("path,engine,message", [
    ("final.pt", "openvino", "the openvino engine runs .onnx or .xml files, not 'final.pt': export the checkpoint"),
    ("model.xml", "onnxruntime", "the onnxruntime engine runs .onnx files, not 'model.xml'"),
    ("model.onnx", "tensorrt", "the tensorrt engine runs .plan or .engine files"),
    ("model.onnx", "coreml", "unknown engine 'coreml': use auto, torch, onnxruntime, openvino, tensorrt"),
    ("model.txt", None, "don't know how to run 'model.txt'"),
])
def test_an_engine_that_cannot_run_the_file_is_refused_by_name(path, engine, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_engine(path, engine=engine)


def test_missing_openvino_names_the_extra(monkeypatch, lite_ir):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'boxinst-serve\[openvino\]'"):
        load_engine(lite_ir)


def test_an_ir_without_its_weights_is_refused_naming_the_file(lite_ir, tmp_path):
    (tmp_path / "model.xml").write_bytes(lite_ir.read_bytes())
    with pytest.raises(FileNotFoundError, match="model.bin"):
        load_engine(tmp_path / "model.xml")


def test_segment_runs_the_onnx_model_on_openvino(lite_onnx, tiny_shapes, tmp_path, capsys):
    from boxinst_serve.cli import main

    image = sorted(Path(tiny_shapes["images"]).glob("*.png"))[0]
    assert main(["segment", str(image), "--model", str(lite_onnx), "--engine", "openvino", "--out", str(tmp_path),
                 "--no-overlays", "--quiet"]) == 0
    assert "segmented 1 image(s)" in capsys.readouterr().out
    assert json.loads((tmp_path / "results.json").read_text()) is not None
    # a checkpoint cannot: the error names what to do
    assert main(["segment", str(image), "--model", "final.pt", "--engine", "openvino", "--out", str(tmp_path)]) == 2
    assert "export the checkpoint first" in capsys.readouterr().err


def test_the_ray_workers_build_the_engine_they_are_told(lite_onnx):
    from boxinst_serve.apps.video.ray import PredictorSpec
    from boxinst_serve.engines.openvino_engine import OpenVINOEngine

    predict, close = PredictorSpec(model=str(lite_onnx), engine="openvino", threads=1)()  # what a worker calls
    assert isinstance(predict.__self__.engine, OpenVINOEngine)
    assert predict.__self__.engine.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    close()


def test_bench_runs_openvino_on_an_exported_model_alone(lite_onnx, lite_ir):
    from boxinst_serve.apps.bench.run import _exported_engine_names, model_kind

    assert _exported_engine_names(lite_ir, model_kind(lite_ir), None, None, None, "fp32") == ["openvino"]
    assert _exported_engine_names(lite_onnx, "onnx", None, None, None, "fp32") == ["onnxruntime"]
    assert _exported_engine_names(lite_onnx, "onnx", ["openvino"], None, None, "fp32") == ["openvino"]
    with pytest.raises(ValueError, match="or --engines openvino"):
        _exported_engine_names(lite_onnx, "onnx", ["torch"], None, None, "fp32")


def test_an_openvino_flavour_repository_runs_the_ir_in_process_as_served(trained_lite, lite_onnx, tiny_shapes,
                                                                          tmp_path):
    """`export --triton --flavour openvino` writes boxinst_net/1/model.xml (no model.onnx) and the
    OpenVINO step; the in-process path of that repository (bench --url --repository's baseline,
    FramePipeline) runs the IR and gives what ONNX Runtime gives on the exported graph."""
    from boxinst_serve.cli import main
    from boxinst_serve.engines.openvino_engine import OpenVINOEngine
    from boxinst_serve.preprocess import read_image
    from boxinst_serve.serving.fused import FramePipeline, net_engine

    repo = tmp_path / "repo"
    assert main(["export", "--checkpoint", str(trained_lite), "--onnx", str(lite_onnx), "--triton", str(repo),
                 "--flavour", "openvino"]) == 0
    version = repo / "boxinst_net" / "1"
    assert (version / "model.xml").is_file() and not (version / "model.onnx").exists()
    assert "OpenVINOEngine" in (version / "model.py").read_text()
    assert 'backend: "python"' in (repo / "boxinst_net" / "config.pbtxt").read_text()
    assert isinstance(net_engine(repo), OpenVINOEngine)
    frame = read_image(sorted(Path(tiny_shapes["images"]).glob("*.png"))[0])
    got, _ = FramePipeline.from_repository(repo).timed(frame)
    from boxinst_serve.predictor import Predictor

    want = Predictor.load(lite_onnx)(frame)
    assert len(got.scores) == len(want.scores)
    np.testing.assert_allclose(got.boxes, want.boxes, atol=BOX_TOL_PX)
    np.testing.assert_allclose(got.scores, want.scores, atol=SCORE_TOL)


# ---- AdelaiDet's own outputs (the oracle fixtures of conftest.py, tests/test_adelaidet.py's check) ----
@pytest.fixture(scope="module")
def oracle_openvino_onnx(oracle_onnx):
    """OpenVINO on the oracle's exported .onnx, compiled once for the four photos."""
    return load_engine(oracle_onnx, engine="openvino")


@pytest.fixture(scope="module")
def oracle_openvino_ir(oracle_onnx, tmp_path_factory):
    """OpenVINO on the IR converted from it, compiled once."""
    from export.openvino import convert_onnx

    return load_engine(convert_onnx(oracle_onnx, tmp_path_factory.mktemp("oracle_ir")))


@pytest.mark.parametrize("name", ORACLE_IMAGES)
def test_imported_weights_give_adelaidets_outputs_in_openvino_from_onnx(oracle_openvino_onnx, name):
    _check_parity(oracle_openvino_onnx, name)


@pytest.mark.parametrize("name", ORACLE_IMAGES)
def test_imported_weights_give_adelaidets_outputs_in_the_openvino_ir(oracle_openvino_ir, name):
    _check_parity(oracle_openvino_ir, name)


# Two engines freed in the order they came, then a signal with a Python handler (CPython runs its
# handlers on the alternate signal stack, as it ran SIGCHLD's in the suite): with a Core per engine
# the thread was left on the first Core's freed signal stack, and the signal killed the process with
# SIGSEGV (si_code SI_KERNEL) before any handler ran. That is how `make test` died in
# tests/test_quantize.py.
_SIGNAL_AFTER_TWO_ENGINES = """
import faulthandler, gc, os, signal, sys, time
faulthandler.enable()
from boxinst_serve.engines.openvino_engine import OpenVINOEngine
first = OpenVINOEngine(sys.argv[1])
second = OpenVINOEngine(sys.argv[1])
del first
gc.collect()
del second
gc.collect()
seen = []
signal.signal(signal.SIGUSR1, lambda *a: seen.append(1))
os.kill(os.getpid(), signal.SIGUSR1)
time.sleep(0.2)
print("handled", len(seen))
"""


def test_a_signal_after_engines_are_freed_out_of_order_is_handled(lite_ir):
    import subprocess

    done = subprocess.run([sys.executable, "-c", _SIGNAL_AFTER_TWO_ENGINES, str(lite_ir)], capture_output=True,
                          text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0 and "handled 1" in done.stdout, (done.returncode, done.stdout, done.stderr[-2000:])
