"""The real Triton server: `boxinst serve` (the tritonserver binary of the nvidia-pytriton wheel) on
a fresh CPU-flavour export of a `lite` model, called through BoxInstClient over gRPC.

Results equal the in-process ONNX Runtime path; bad inputs get clear errors and the server keeps
serving; concurrent clients all get correct answers; the GPU configs parse with Triton's own
model_config proto and match the ONNX graph."""
from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("pytriton", reason="nvidia-pytriton (the serve extra) ships the tritonserver binary")
grpcclient = pytest.importorskip("tritonclient.grpc")

from boxinst_serve.client import AsyncBoxInstClient, BoxInstClient, BoxInstError, BoxInstTimeout  # noqa: E402
from boxinst_serve.engines.onnxruntime_engine import OnnxRuntimeEngine  # noqa: E402
from boxinst_serve.postprocess import to_instances  # noqa: E402
from boxinst_serve.preprocess import decode_image  # noqa: E402
from boxinst_serve.server import free_port  # noqa: E402
from boxinst_serve.serving import ServingConfig, letterbox  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def served(trained_lite, tiny_shapes, tmp_path_factory):
    """`boxinst serve` on free localhost ports; stopped with SIGINT at the end (must exit 0)."""
    from export.triton import write_triton_net

    root = tmp_path_factory.mktemp("serving")
    repo = root / "model_repository"
    shutil.copytree(ROOT / "model_repository", repo, ignore=shutil.ignore_patterns("boxinst_net", ".boxinst_net*"))
    write_triton_net(trained_lite, repo, flavour="cpu")
    ports = [free_port() for _ in range(3)]
    log = root / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "boxinst_serve.cli", "serve", "--repository", str(repo),
                             "--grpc-port", str(ports[0]), "--http-port", str(ports[1]),
                             "--metrics-port", str(ports[2]), "--log", str(root / "tritonserver.log")],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"127.0.0.1:{ports[0]}"
    deadline = time.monotonic() + 180
    client = BoxInstClient(url, timeout_s=30)
    while not client.is_ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"boxinst serve did not come up:\n{log.read_text()}\n{(root / 'tritonserver.log').read_text()}")
        time.sleep(0.5)
    serving = ServingConfig.load(repo)
    engine = OnnxRuntimeEngine(repo / "boxinst_net" / "1" / "model.onnx")
    images = sorted(Path(tiny_shapes["images"]).glob("*.png"))
    yield {"url": url, "client": client, "repo": repo, "serving": serving, "engine": engine, "images": images,
           "proc": proc, "log": log}
    client.close()
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        assert code == 0, log.read_text()
    assert "stopping" in log.read_text()


def reference(served, data: bytes):
    """The in-process path: same decode, letterbox, ONNX Runtime engine and post-processing."""
    serving = served["serving"]
    image = decode_image(data)
    canvas, meta = letterbox(image, serving.model, serving.canvas)
    cfg = serving.model
    return to_instances(served["engine"](canvas[None]), 0, meta, cfg.mask_out_stride, cfg.mask_threshold)


def assert_same(got, ref):
    assert len(got) == len(ref) > 0
    assert got.image_size == ref.image_size
    np.testing.assert_allclose(got.boxes, ref.boxes, rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(got.scores, ref.scores, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(got.classes, ref.classes)
    for a, b in zip(got.masks, ref.masks):
        union = (a | b).sum()
        assert union == 0 or (a & b).sum() / union >= 0.99


def encode(image_rgb: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR) if image_rgb.ndim == 3 else image_rgb)
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize("ext", [".png", ".jpg"])
@pytest.mark.parametrize("mask_format", ["rle", "bitmap"])
def test_grpc_results_equal_in_process_onnxruntime(served, ext, mask_format):
    for path in served["images"][:3]:
        data = encode(decode_image(path.read_bytes()), ext)
        got = served["client"].segment(data, mask_format=mask_format)
        assert_same(got, reference(served, data))
        if mask_format == "bitmap":
            assert got._masks is not None  # came over the wire, not decoded from RLE
            rle_masks = served["client"].segment(data).masks
            assert (rle_masks == got.masks).all()


def test_path_and_numpy_inputs_and_class_names(served):
    path = served["images"][0]
    by_path = served["client"].segment(path)
    by_array = served["client"].segment(decode_image(path.read_bytes()))  # sent as PNG: lossless
    assert_same(by_array, by_path)
    assert by_path.class_names == served["serving"].model.class_names
    geometry = by_path.geometry()
    assert len(geometry) == len(by_path) and "centroid" in geometry[0]


def test_metadata_and_config_are_served(served):
    c = grpcclient.InferenceServerClient(served["url"])
    meta = c.get_model_metadata("boxinst", as_json=True)
    assert [i["name"] for i in meta["inputs"]] == ["image", "mask_format"]
    assert {o["name"] for o in meta["outputs"]} == {"num_instances", "boxes", "scores", "classes", "masks_rle",
                                                    "image_size", "masks"}
    cfg = c.get_model_config("boxinst_net", as_json=True)["config"]
    assert cfg["max_batch_size"] == 8 and "dynamic_batching" in cfg
    c.close()


def _png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def _raw_infer(url: str, data: bytes):
    """A request the client would refuse (empty input), straight through tritonclient."""
    c = grpcclient.InferenceServerClient(url)
    inp = grpcclient.InferInput("image", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[data]], dtype=np.object_))
    try:
        return c.infer("boxinst", [inp], client_timeout=30)
    finally:
        c.close()


def test_bad_inputs_get_clear_errors_and_the_server_keeps_serving(served):
    client = served["client"]
    good = served["images"][0].read_bytes()
    expected = len(client.segment(good))
    jpeg = encode(decode_image(good), ".jpg")
    cases = {
        "non-image bytes": (b"this is not an image" * 10, "not a decodable image"),
        "truncated JPEG": (jpeg[: len(jpeg) // 2], "truncated"),
        "30000x30000 PNG header": (_png_claiming(30000, 30000), "over the 50 MP limit"),
    }
    for name, (data, message) in cases.items():
        with pytest.raises(BoxInstError, match=message):
            client.segment(data)
        assert len(client.segment(good)) == expected, f"server broken after {name}"
    with pytest.raises(ValueError, match="empty"):
        client.segment(b"")  # refused by the client
    with pytest.raises(Exception, match="empty input"):
        _raw_infer(served["url"], b"")  # and by the server
    assert len(client.segment(good)) == expected


def test_grayscale_rgba_and_16_bit_images_work(served):
    rgb = decode_image(served["images"][1].read_bytes())
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    rgba = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)
    deep = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257
    for name, arr in {"gray": gray, "rgba": rgba, "16-bit": deep}.items():
        ok, buf = cv2.imencode(".png", arr)
        data = buf.tobytes()
        got = served["client"].segment(data)
        assert got.image_size == rgb.shape[:2], name
        assert_same(got, reference(served, data))
    # 16-bit and RGBA carry the same colours as the 8-bit image: the same instances.
    assert_same(served["client"].segment(cv2.imencode(".png", rgba)[1].tobytes()),
                served["client"].segment(encode(rgb, ".png")))


def test_concurrent_clients_all_succeed_with_correct_results(served):
    datas = [p.read_bytes() for p in served["images"][:4]]
    refs = [reference(served, d) for d in datas]
    errors: list[str] = []

    def worker(k: int) -> None:
        with BoxInstClient(served["url"], timeout_s=60) as c:
            for r in range(25):
                i = (k + r) % len(datas)
                try:
                    got = c.segment(datas[i])
                    assert len(got) == len(refs[i]) and np.allclose(got.boxes, refs[i].boxes, rtol=1e-4, atol=1e-2)
                except Exception as e:  # noqa: BLE001 - collected and reported below
                    errors.append(f"client {k} request {r}: {e!r}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors[:5]


def test_segment_batch_and_asyncio_client(served):
    datas = [p.read_bytes() for p in served["images"][:3]]
    batch = served["client"].segment_batch(datas)
    for got, d in zip(batch, datas):
        assert_same(got, reference(served, d))

    async def run():
        async with AsyncBoxInstClient(served["url"]) as c:
            return await c.segment_batch(datas)

    for got, want in zip(asyncio.run(run()), batch):
        assert_same(got, want)


def test_timeouts_raise_and_a_dead_server_is_an_error_not_a_hang(served):
    with BoxInstClient(served["url"], timeout_s=0.001) as c:
        with pytest.raises(BoxInstTimeout):
            c.segment(served["images"][0])
    t0 = time.monotonic()
    with BoxInstClient(f"127.0.0.1:{free_port()}", timeout_s=2) as c:
        assert not c.is_ready()
        with pytest.raises(BoxInstError):
            c.segment(served["images"][0])
    assert time.monotonic() - t0 < 15


@pytest.mark.parametrize("flavour", ["onnxruntime", "tensorrt", "cpu"])
def test_net_configs_parse_with_tritons_proto_and_match_the_onnx_graph(served, flavour):
    import onnx
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from export.triton import net_config

    cfg = served["serving"].model
    text = net_config(cfg, flavour, trt_accelerator=flavour == "onnxruntime", fp16=True)
    mc = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert mc.name == "boxinst_net" and mc.max_batch_size == 8
    if flavour != "cpu":
        assert mc.platform == {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}[flavour]
        assert mc.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    graph = onnx.load(str(served["repo"] / "boxinst_net" / "1" / "model.onnx"), load_external_data=False).graph
    onnx_types = {onnx.TensorProto.UINT8: model_config_pb2.TYPE_UINT8, onnx.TensorProto.INT32: model_config_pb2.TYPE_INT32,
                  onnx.TensorProto.FLOAT: model_config_pb2.TYPE_FP32}

    def dims(value_info) -> list[int]:  # ONNX shape without the batch dim, symbolic -> -1
        return [d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim][1:]

    for tensors, entries in ((graph.input, mc.input), (graph.output, mc.output)):
        by_name = {e.name: e for e in entries}
        assert set(by_name) == {t.name for t in tensors}
        for t in tensors:
            e = by_name[t.name]
            assert e.data_type == onnx_types[t.type.tensor_type.elem_type], t.name
            want = dims(t)
            if e.HasField("reshape"):  # num_detections: [B] in ONNX, dims [1] reshaped to [] in Triton
                assert list(e.reshape.shape) == want == [] and list(e.dims) == [1]
            elif flavour == "cpu" and t.name == "num_detections":  # the Python model returns [B, 1]
                assert list(e.dims) == [1] and want == []
            else:
                assert list(e.dims) == want, t.name


def test_committed_repository_configs_parse_and_chain(served):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    configs = {}
    for name in ("boxinst", "boxinst_preprocess", "boxinst_postprocess"):
        text = (ROOT / "model_repository" / name / "config.pbtxt").read_text()
        configs[name] = text_format.Parse(text, model_config_pb2.ModelConfig())
    steps = configs["boxinst"].ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["boxinst_preprocess", "boxinst_net", "boxinst_postprocess"]
    for s in (steps[0], steps[2]):
        model = configs[s.model_name]
        assert set(s.input_map) == {i.name for i in model.input}
        assert set(s.output_map) == {o.name for o in model.output}


def test_segment_command_through_the_server(served, tmp_path, capsys):
    from boxinst_serve.cli import main

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    code = main(["segment", str(served["images"][0]), str(bad), "--url", served["url"], "--out", str(tmp_path / "o"),
                 "--quiet"])
    assert code == 1  # one image failed, and it is named
    err = capsys.readouterr().err
    assert "broken.png" in err and "not a decodable image" in err
    results = __import__("json").loads((tmp_path / "o" / "results.json").read_text())
    ref = reference(served, served["images"][0].read_bytes())
    assert len(results) == len(ref) and results[0]["geometry"]["area"] > 0
    assert (tmp_path / "o" / f"{served['images'][0].stem}.png").is_file()


def test_light_client_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n"
            "import boxinst_serve.client, boxinst_serve.results\n"
            "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_export_records_the_serving_size_in_the_repository(trained_lite, tmp_path):
    from boxinst_serve.cli import main

    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "model_repository", repo, ignore=shutil.ignore_patterns("boxinst_net", ".boxinst_net*"))
    assert main(["export", "--checkpoint", str(trained_lite), "--triton", str(repo), "--test-size", "256x320"]) == 0
    serving = ServingConfig.load(repo)
    assert (serving.model.min_size_test, serving.model.max_size_test) == (256, 320)
    assert serving.canvas == (256, 320)
    assert (repo / "boxinst_net" / "1" / "model.py").is_file() and not list(repo.glob(".boxinst_net*"))
