"""The real Triton server: `boxinst serve` (the tritonserver binary of the nvidia-pytriton wheel) on
a fresh CPU-flavour export of a `lite` model, called through BoxInstClient over gRPC.

Results equal the in-process ONNX Runtime path; bad inputs get clear errors and the server keeps
serving; concurrent clients all get correct answers; the GPU configs parse with Triton's own
model_config proto and match the ONNX graph."""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
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
from tritonclient.utils import InferenceServerException  # noqa: E402

from boxinst_serve.client import AsyncBoxInstClient, BoxInstClient, BoxInstError, BoxInstTimeout  # noqa: E402
from boxinst_serve.protocol import FUSED_RAW_MODEL, RAW_MODEL  # noqa: E402
from boxinst_serve.preprocess import decode_image  # noqa: E402
from tests.reference import TorchReference  # noqa: E402
from tests.servers import assert_same, encode, repository_copy, running_server  # noqa: E402
from boxinst_serve.config import CONTRACT_VERSION  # noqa: E402
from boxinst_serve.serving import ServingConfig  # noqa: E402
from boxinst_serve.serving.queue import QueuePolicy  # noqa: E402
from boxinst_serve.client.shm import SHM_DIR, is_stale, owner_tag, registered_regions  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RAW_MAX_PIXELS = 2_000_000


@pytest.fixture(scope="module")
def served(trained_lite, tiny_shapes, tmp_path_factory):
    """`boxinst serve` on free localhost ports; stopped with SIGINT at the end (must exit 0)."""
    from export.triton import write_triton_net

    root = tmp_path_factory.mktemp("serving")
    repo = repository_copy(root / "model_repository")
    # boxinst_net and boxinst_raw_fused. A queue longer than the default 8 per instance: 8 clients at once
    # plus the supervisor's probes can fill that (measured: 1 ServerBusy in 200 requests); these tests
    # check the answers under concurrency, tests/test_queue.py the refusals.
    write_triton_net(trained_lite, repo, flavour="cpu", queue=QueuePolicy(per_instance=32))
    # A 2 MP frame limit for raw frames (ensemble and one-process model), so that the
    # over-the-limit test sends 2 MP, not 50.
    for name in ("boxinst_preprocess_raw", FUSED_RAW_MODEL):
        cfg = repo / name / "config.pbtxt"
        limit = '{ key: "max_pixels", value: { string_value: "0" } }'
        assert limit in cfg.read_text(), name
        cfg.write_text(cfg.read_text().replace(limit, limit.replace('"0"', f'"{RAW_MAX_PIXELS}"')))
    with running_server(repo, root) as server:
        client = BoxInstClient(server["url"], timeout_s=30)
        yield {**server, "client": client, "repo": repo, "serving": ServingConfig.load(repo),
               "reference": TorchReference(trained_lite),
               "images": sorted(Path(tiny_shapes["images"]).glob("*.png"))}
        # Every test's shared memory is unregistered and unlinked (checked after the server is
        # stopped, so that a failure here never leaves the server running).
        try:
            left = [r for r in registered_regions(client._client) if r.startswith("boxinst_")]
        except Exception as e:  # noqa: BLE001 - reported below, after the server is stopped
            left = [f"(shared-memory status failed: {e})"]
        files = own_shm_files()
        client.close()
    assert "stopping" in server["log"].read_text()
    assert not left and not files, (left, files)


def reference(served, image):
    """The checkpoint's torch model on the single image, with pre- and post-processing written in
    tests/reference.py from SPEC.md: no code shared with the server's steps (prepare_for,
    instances_for), so that a bug in them fails here. image: encoded bytes or an RGB uint8 array."""
    return served["reference"](image)


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
    by_array = served["client"].segment(decode_image(path.read_bytes()))  # sent raw: lossless
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
    with pytest.raises(InferenceServerException, match="empty input"):
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


def _batch_sizes(url: str) -> dict[int, int]:
    """{batch size: executions} of boxinst_net so far (Triton's statistics)."""
    c = grpcclient.InferenceServerClient(url)
    try:
        stats = c.get_inference_statistics("boxinst_net", as_json=True)["model_stats"][0]
    finally:
        c.close()
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}


def test_concurrent_clients_get_the_single_image_answers_from_batches(served):
    """8 clients at once: the dynamic batcher runs the network on batches of several requests
    (Triton's statistics say so), same-shape requests together and a wide one beside them, and
    every answer is the model's on that single image."""
    frames = [decode_image(p.read_bytes()) for p in served["images"][:4]]
    frames.append(np.ascontiguousarray(frames[0][24:104]))  # another padded shape in the same batches
    datas = [encode(f, ".png") for f in frames]
    refs = [reference(served, d) for d in datas]
    errors: list[str] = []
    before = _batch_sizes(served["url"])

    def worker(k: int) -> None:
        with BoxInstClient(served["url"], timeout_s=60) as c:
            for r in range(25):
                i = (k + r) % len(datas)
                try:
                    assert_same(c.segment(datas[i]), refs[i])
                except Exception as e:  # noqa: BLE001 - collected and reported below
                    errors.append(f"client {k} request {r}: {e!r}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not [t for t in threads if t.is_alive()], "a client did not finish its 25 requests in 300 s"
    assert not errors, errors[:5]
    after = _batch_sizes(served["url"])
    batched = {b: n - before.get(b, 0) for b, n in after.items() if b > 1 and n > before.get(b, 0)}
    assert batched, f"the network never ran a batch of more than one request: {after}"


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
    # A port held without listening: connections are refused, and no other process can take it.
    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))
        t0 = time.monotonic()
        with BoxInstClient(f"127.0.0.1:{dead.getsockname()[1]}", timeout_s=2, retry_s=3) as c:
            assert not c.is_ready()
            with pytest.raises(BoxInstError, match="failed to connect|UNAVAILABLE"):
                c.segment(served["images"][0])
        elapsed_s = time.monotonic() - t0
    # At most is_ready's two calls and the last request (timeout_s each) and the retries (retry_s); a
    # refused connection answers at once (0.2 s in all, measured on the 2-core EPYC under load).
    assert elapsed_s < 3 * 2 + 3, f"a dead server took {elapsed_s:.1f} s to report"


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
    assert serving.contract_version == CONTRACT_VERSION
    assert (repo / "boxinst_net" / "1" / "model.py").is_file() and not list(repo.glob(".boxinst_net*"))


# --- Raw frames and shared memory (the `boxinst_raw` ensemble and, written by the cpu export, the
# one-process `boxinst_raw_fused`, which the client picks on this server) -----------------------

def own_shm_files() -> list[str]:
    """This process's boxinst files in /dev/shm, and those of dead processes."""
    return sorted(p.name for p in SHM_DIR.iterdir()
                  if p.name.startswith(f"boxinst_{owner_tag()}_") or is_stale(p.name))


def _frames(served) -> list[np.ndarray]:
    """Shapes images, a landscape crop of odd size, a portrait crop, and a non-contiguous
    (mirrored) view: each padded to its own size by every path."""
    frames = [decode_image(p.read_bytes()) for p in served["images"][:3]]
    frames.append(np.ascontiguousarray(frames[0][:, :77].transpose(1, 0, 2)[:, :100]))
    frames.append(np.ascontiguousarray(frames[2][:, 20:84]))
    frames.append(frames[1][:, ::-1])
    return frames


@pytest.mark.parametrize("mask_format", ["rle", "bitmap"])
def test_raw_and_shared_memory_results_equal_the_png_path(served, mask_format):
    """Raw frames, in the gRPC message and through shared memory, to the one-process model (the
    client's choice on this CPU server) and to the ensemble."""
    url = served["url"]
    assert served["client"].raw_model == FUSED_RAW_MODEL
    with BoxInstClient(url, arrays="png") as png, BoxInstClient(url, shared_memory=True) as shm, \
            BoxInstClient(url, raw_model=RAW_MODEL) as ensemble, \
            BoxInstClient(url, raw_model=RAW_MODEL, shared_memory=True) as ensemble_shm:
        assert shm.raw_model == FUSED_RAW_MODEL and ensemble_shm.raw_model == RAW_MODEL
        for frame in _frames(served):
            want = png.segment(frame, mask_format=mask_format)
            assert_same(want, reference(served, encode(frame, ".png")))
            raw = served["client"].segment(frame, mask_format=mask_format)
            via_shm = shm.segment(frame, mask_format=mask_format)
            assert png.last_timing["encode_s"] > 0 and shm.last_timing["infer_s"] > 0
            for got in (raw, via_shm, ensemble.segment(frame, mask_format=mask_format),
                        ensemble_shm.segment(frame, mask_format=mask_format)):
                assert_same(got, want)
                assert [r["counts"] for r in got.rle] == [r["counts"] for r in want.rle]
                if mask_format == "bitmap":
                    assert got._masks is not None and (got._masks == want.masks).all()


@pytest.mark.parametrize("model", [FUSED_RAW_MODEL, RAW_MODEL])
def test_bad_raw_frames_are_refused_and_the_server_keeps_serving(served, model):
    client, url = served["client"], served["url"]
    good = decode_image(served["images"][0].read_bytes())
    expected = len(client.segment(good))
    server_side = {  # straight through tritonclient: what the server itself answers
        "float32": (good.astype(np.float32)[None], f"data-type is 'FP32', but model '{model}' expects 'UINT8'"),
        "4 channels": (np.zeros((1, 50, 60, 4), np.uint8), r"Expected \[-1,-1,-1,3\], got \[1,50,60,4\]"),
        "no channel axis": (np.zeros((1, 50, 60), np.uint8), r"Expected \[-1,-1,-1,3\], got \[1,50,60\]"),
        "empty": (np.zeros((1, 0, 60, 3), np.uint8), r"empty frame \(60x0 px\)"),
        "two frames": (np.zeros((2, 50, 60, 3), np.uint8), "one frame per request, got a batch of 2"),
        "over the limit": (np.zeros((1, 1500, 1400, 3), np.uint8), r"frame is 1400x1500 px, over the 2 MP limit"),
        "mask format": ((good[None], "png"), "mask_format must be one of"),
    }
    c = grpcclient.InferenceServerClient(url)
    try:
        for name, (array, message) in server_side.items():
            array, fmt = array if isinstance(array, tuple) else (array, None)
            inp = grpcclient.InferInput("image", list(array.shape), grpcclient.np_to_triton_dtype(array.dtype))
            inp.set_data_from_numpy(array)
            inputs = [inp]
            if fmt is not None:
                inputs.append(grpcclient.InferInput("mask_format", [1, 1], "BYTES"))
                inputs[-1].set_data_from_numpy(np.array([[fmt.encode()]], dtype=np.object_))
            with pytest.raises(InferenceServerException, match=message):
                c.infer(model, inputs, client_timeout=30)
            assert len(client.segment(good)) == expected, f"server broken after {name}"
    finally:
        c.close()
    if model == RAW_MODEL:
        return  # the client-side checks do not depend on the model
    client_side = {  # refused before sending, with the same words
        "float32": (good.astype(np.float32), "must be RGB uint8 .* got dtype float32"),
        "RGBA": (np.zeros((50, 60, 4), np.uint8), "must have 3 channels .* got 4"),
        "gray": (np.zeros((50, 60), np.uint8), "got 2 dimensions"),
        "empty": (np.zeros((0, 60, 3), np.uint8), "empty frame"),
        "over gRPC's message limit": (np.zeros((4800, 4800, 3), np.uint8), "over the 64 MiB gRPC message limit"),
    }
    for name, (array, message) in client_side.items():
        with pytest.raises(ValueError, match=message):
            client.segment(array)
    for raw_model in (FUSED_RAW_MODEL, RAW_MODEL):
        with BoxInstClient(url, shared_memory=True, raw_model=raw_model) as shm:
            with pytest.raises(BoxInstError, match="over the 2 MP limit"):
                shm.segment(np.zeros((1500, 1400, 3), np.uint8))
            assert len(shm.segment(good)) == expected  # the same slot serves the next frame
    assert len(client.segment(good)) == expected


def test_shared_memory_regions_are_reused_grown_and_removed_on_close(served):
    status = grpcclient.InferenceServerClient(served["url"])
    frames = _frames(served)
    with BoxInstClient(served["url"], shared_memory=True) as c:
        c.segment(frames[0])
        first = c.shared_memory_regions
        assert len(first) == 2 and set(first) <= set(registered_regions(status))  # input and output, registered
        for _ in range(3):
            c.segment(frames[1])  # same size: the same regions
        assert c.shared_memory_regions == first
        big = cv2.resize(frames[0], (256, 192))
        c.segment(big)  # a larger frame: a new input region replaces the old one
        grown = c.shared_memory_regions
        assert len(grown) == 2 and grown != first and set(grown) <= set(registered_regions(status))
        assert not set(first) - set(grown) & set(registered_regions(status))
        # concurrent requests get a slot each: regions for two or more slots, results still right
        batch = c.segment_batch([frames[0], frames[1], frames[2], frames[0]])
        for got, frame in zip(batch, (frames[0], frames[1], frames[2], frames[0])):
            assert_same(got, served["client"].segment(frame))
        names = c.shared_memory_regions
        assert all((SHM_DIR / n).exists() for n in names)
    assert not set(names) & set(registered_regions(status))
    assert not [n for n in names if (SHM_DIR / n).exists()]
    status.close()


def test_regions_of_a_killed_client_are_removed_by_the_next_client(served):
    """SIGKILL to the client's whole process group (Python's resource tracker included, which
    would otherwise unlink the files): files and registrations stay behind until the next client
    with shared memory starts."""
    code = ("import sys, time, numpy as np\n"
            "from boxinst_serve.client import BoxInstClient\n"
            "c = BoxInstClient(sys.argv[1], shared_memory=True)\n"
            "c.segment(np.zeros((64, 80, 3), np.uint8))\n"
            "print(' '.join(c.shared_memory_regions), flush=True)\n"
            "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, served["url"]], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT, start_new_session=True)
    try:
        names = proc.stdout.readline().split()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    status = grpcclient.InferenceServerClient(served["url"])
    assert len(names) == 2
    assert set(names) <= set(registered_regions(status)) and all((SHM_DIR / n).exists() for n in names)
    with BoxInstClient(served["url"], shared_memory=True) as c:
        assert not set(names) & set(registered_regions(status))
        assert not [n for n in names if (SHM_DIR / n).exists()]
        frame = decode_image(served["images"][0].read_bytes())
        assert_same(c.segment(frame), reference(served, frame))  # the new client's regions work
    assert not [r for r in registered_regions(status) if r.startswith("boxinst_")]
    status.close()


def test_a_server_without_the_raw_ensemble_gets_a_hint(served):
    with BoxInstClient(served["url"], raw_model="boxinst_missing") as c:
        with pytest.raises(BoxInstError, match="no 'boxinst_missing' ensemble for raw frames .* arrays='png'"):
            c.segment(np.zeros((32, 32, 3), np.uint8))


def test_a_client_never_closed_cleans_up_at_interpreter_exit(served):
    code = ("import sys, numpy as np\n"
            "from boxinst_serve.client import BoxInstClient\n"
            "c = BoxInstClient(sys.argv[1], shared_memory=True)\n"
            "c.segment(np.zeros((64, 80, 3), np.uint8))\n"
            "print(' '.join(c.shared_memory_regions), flush=True)\n")
    out = subprocess.run([sys.executable, "-c", code, served["url"]], capture_output=True, text=True, cwd=ROOT,
                         check=True)
    names = out.stdout.split()
    assert len(names) == 2 and "leaked" not in out.stderr  # unlinked by us, not by the resource tracker
    status = grpcclient.InferenceServerClient(served["url"])
    assert not set(names) & set(registered_regions(status))
    assert not [n for n in names if (SHM_DIR / n).exists()]
    status.close()


def test_raw_ensemble_metadata_and_asyncio_raw_frames(served):
    c = grpcclient.InferenceServerClient(served["url"])
    meta = c.get_model_metadata("boxinst_raw", as_json=True)
    fused = c.get_model_metadata(FUSED_RAW_MODEL, as_json=True)
    c.close()
    image = {i["name"]: i for i in meta["inputs"]}["image"]
    assert image["datatype"] == "UINT8" and image["shape"] == ["-1", "-1", "-1", "3"]
    assert (fused["inputs"], fused["outputs"]) == (meta["inputs"], meta["outputs"])
    frames = _frames(served)[:2]

    async def run(raw_model):
        async with AsyncBoxInstClient(served["url"], raw_model=raw_model) as a:
            return await a.segment_batch(frames), a.raw_model

    for raw_model, picked in ((None, FUSED_RAW_MODEL), (RAW_MODEL, RAW_MODEL)):
        results, used = asyncio.run(run(raw_model))
        assert used == picked
        for got, frame in zip(results, frames):
            assert_same(got, served["client"].segment(frame))


def test_committed_raw_ensemble_chains_the_same_net_and_postprocess(served):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    def parse(name):
        text = (ROOT / "model_repository" / name / "config.pbtxt").read_text()
        return text_format.Parse(text, model_config_pb2.ModelConfig())

    raw, encoded, pre = parse("boxinst_raw"), parse("boxinst"), parse("boxinst_preprocess_raw")
    steps = raw.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["boxinst_preprocess_raw", "boxinst_net", "boxinst_postprocess"]
    assert set(steps[0].input_map) == {i.name for i in pre.input}
    assert set(steps[0].output_map) == {o.name for o in pre.output}
    assert list(steps[1:]) == list(encoded.ensemble_scheduling.step[1:])
    assert list(raw.output) == list(encoded.output)


def test_bench_by_input_path_reports_where_the_time_goes(served, capsys):
    from boxinst_serve.cli import main

    assert main(["bench", "--url", served["url"], "--repository", str(served["repo"]), "--input", "png,raw,shm",
                 "--frames", "160x120", "--image", str(served["images"][0]), "--iters", "2", "--warmup", "1",
                 "--json"]) == 0
    rows = __import__("json").loads(capsys.readouterr().out)["rows"]
    assert main(["bench", "--url", served["url"], "--repository", str(served["repo"]), "--input", "raw",
                 "--raw-model", RAW_MODEL, "--frames", "160x120", "--image", str(served["images"][0]),
                 "--iters", "2", "--warmup", "1", "--json"]) == 0
    rows += __import__("json").loads(capsys.readouterr().out)["rows"]
    assert [(r["input"], r["model"], r["frame"], r["requests"]) for r in rows] == [
        ("png", "boxinst", "160x120", 2), ("raw", FUSED_RAW_MODEL, "160x120", 2), ("shm", FUSED_RAW_MODEL, "160x120", 2),
        ("raw", RAW_MODEL, "160x120", 2)]
    assert len({r["instances"] for r in rows}) == 1
    for r in rows:
        assert r["server_compute_ms"] > 0 and r["queue_ms"] >= 0 and r["in_process_p50_ms"] > 0
        assert r["ratio"] == pytest.approx(r["p50_ms"] / r["in_process_p50_ms"])
        if r["model"] == FUSED_RAW_MODEL:  # one process: one step, against the whole in-process run
            assert list(r["steps"]) == ["all"] and r["steps"]["all"]["model"] == FUSED_RAW_MODEL
        else:
            assert [s["model"] for s in r["steps"].values()] == [
                "boxinst_preprocess" if r["input"] == "png" else "boxinst_preprocess_raw", "boxinst_net",
                "boxinst_postprocess"]
        assert all(s["server_ms"] > 0 and s["in_process_ms"] > 0 and 0 < s["infer_ms"] <= s["server_ms"]
                   for s in r["steps"].values())
    assert not [n for n in registered_regions(served["client"]._client) if n.startswith("boxinst_")]


def test_cpu_net_runs_onnx_runtime_without_spinning_threads(served):
    from boxinst_serve.apps.bench.frames import served_engine_settings
    from export.triton import net_config

    assert served_engine_settings(served["url"]) == {"threads": 0, "spinning": False}
    assert 'key: "intra_op_spinning", value: { string_value: "1" }' in net_config(
        served["serving"].model, "cpu", intra_op_spinning=True)
