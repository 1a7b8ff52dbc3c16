"""The FLOP count that `boxinst bench` reports, against hand counts; `boxinst bench` itself on a
checkpoint (.pt) and on an exported model (.onnx) given as --checkpoint."""
from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from boxinst_serve.apps.bench.engines import dense_flops_per_s, network_flops
from boxinst_serve.config import lite
from boxinst_serve.model import build_model
from boxinst_serve.model.dynamic_head import dynamic_mask_logits


def test_dynamic_mask_heads_flops_match_a_hand_count():
    cfg = lite(num_classes=3)
    n, h, w = 5, 8, 12  # instances, mask-branch feature size (stride 8)
    feats = torch.randn(1, cfg.mask_branch_out_channels, h, w)
    params = torch.randn(n, cfg.num_controller_params)
    locations = torch.rand(n, 2) * 64
    with FlopCounterMode(display=False) as counter:
        dynamic_mask_logits(feats, params, locations, torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long),
                            cfg)
    # three 1x1 layers per instance over the stride-8 map: (C+2 -> 8), (8 -> 8), (8 -> 1); 2 FLOPs per MAC
    c_in = cfg.mask_branch_out_channels + 2
    ch = cfg.mask_head_channels
    macs_per_pixel = c_in * ch + ch * ch + ch * 1
    assert counter.get_total_flops() == 2 * macs_per_pixel * h * w * n


def test_resnet18_body_matches_torchvisions_documented_count():
    # torchvision documents ResNet-18 at 224x224 as 1.814 GFLOPS counting multiply-adds; our
    # counter counts 2 FLOPs per multiply-add. The fc layer (0.5 M MACs) is not in our body.
    from torchvision.models import ResNet18_Weights, resnet18

    body = torch.nn.Sequential(*list(resnet18().children())[:-2]).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        body(torch.zeros(1, 3, 224, 224))
    documented_macs = ResNet18_Weights.IMAGENET1K_V1.meta["_ops"] * 1e9
    assert abs(counter.get_total_flops() / 2 - documented_macs) / documented_macs < 0.01


def test_network_flops_grow_with_the_input_and_do_not_depend_on_weights():
    cfg = lite(num_classes=3).replace(min_size_test=64, max_size_test=96)
    a = network_flops(build_model(cfg), torch.zeros(1, 64, 96, 3, dtype=torch.uint8))
    torch.manual_seed(1)
    b = network_flops(build_model(cfg), torch.zeros(1, 64, 96, 3, dtype=torch.uint8))
    big = network_flops(build_model(cfg), torch.zeros(1, 128, 192, 3, dtype=torch.uint8))
    assert a == b > 0
    assert 3.0 < big / a < 4.5  # convolutions scale with pixels; the K dynamic heads too


def test_dense_throughput_is_measured():
    assert dense_flops_per_s("cpu", n=256, seconds=0.2) > 1e8


def test_machine_description_names_the_int8_instruction_set():
    from boxinst_serve.measure import machine_description

    vnni = "processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu avx2 avx512f avx512_vnni\n"
    avx2 = "processor\t: 0\nmodel name\t: EPYC\nflags\t\t: fpu sse avx2 fma\n"
    assert machine_description(vnni).endswith("VNNI (avx512_vnni avx512f avx2)")
    assert machine_description(vnni).startswith("Xeon, ")
    assert machine_description(avx2).endswith("no VNNI (avx2)")


@pytest.fixture(scope="module")
def small_models(tmp_path_factory) -> dict:
    """A freshly initialised `lite` checkpoint at test size 64x96 and its ONNX export: speed and the
    bench's paths do not depend on the weights."""
    from boxinst_serve.checkpoint import save_atomic
    from export.onnx import export_onnx

    root = tmp_path_factory.mktemp("bench_models")
    cfg = lite(num_classes=3).replace(min_size_test=64, max_size_test=96)
    torch.manual_seed(0)
    save_atomic({"model": build_model(cfg).state_dict(), "model_config": cfg.to_dict()}, root / "model.pt")
    return {"pt": root / "model.pt", "onnx": export_onnx(root / "model.pt", root / "onnx")}


def _bench_json(capsys, *argv: str) -> dict:
    from boxinst_serve.cli import main

    assert main(["bench", *argv, "--iters", "2", "--warmup", "1", "--no-stages", "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_bench_of_a_checkpoint_compares_torch_and_onnxruntime(small_models, capsys):
    out = _bench_json(capsys, "--checkpoint", str(small_models["pt"]))
    assert [r["engine"] for r in out["reports"]] == ["torch", "onnxruntime"]
    assert out["machine"] and out["dense_gflops_per_s"] > 0
    for r in out["reports"]:
        assert r["input_hw"] == [64, 64]  # the 512x512 random image at the checkpoint's test size 64x96
        assert r["p50_ms"] > 0 and r["gflops"] > 0


def test_bench_runs_an_onnx_model_given_as_checkpoint_alone(small_models, capsys):
    # The engine benchmark used to torch.load every --checkpoint: "Unsupported operand" on an .onnx file.
    out = _bench_json(capsys, "--checkpoint", str(small_models["onnx"]))
    assert [r["engine"] for r in out["reports"]] == ["onnxruntime"]
    (report,) = out["reports"]
    assert report["input_hw"] == [64, 64] and report["p50_ms"] > 0
    assert report["gflops"] > 0 and report["efficiency"] > 0  # FLOPs of the config in the ONNX metadata


@pytest.mark.parametrize("flags, message", [(("--engines", "torch,onnxruntime"), "runs on onnxruntime alone"),
                                            (("--size", "128"), "--size changes the model's config"),
                                            (("--score-thresh", "0"), "--score-thresh changes the model's config")])
def test_bench_of_an_onnx_model_refuses_what_needs_a_checkpoint(small_models, capsys, flags, message):
    from boxinst_serve.cli import main

    assert main(["bench", "--checkpoint", str(small_models["onnx"]), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and ".pt checkpoint" in err


def test_bench_checkpoint_with_another_suffix_is_an_error_naming_what_it_takes(tmp_path, capsys):
    from boxinst_serve.cli import main

    weights = tmp_path / "model.bin"
    weights.write_bytes(b"not a model")
    assert main(["bench", "--checkpoint", str(weights)]) == 2
    err = capsys.readouterr().err
    assert "boxinst bench: error: --checkpoint takes" in err
    assert all(s in err for s in (".pt", ".onnx", ".plan", "model.bin"))


class _Connected(Exception):
    """Raised by the fake BoxInstClient once it has recorded its keywords."""


SECURITY_FLAGS = ["--ssl", "--api-key", "k3y"]


def _recording_client(calls: list):
    def client(url, **kwargs):
        calls.append(kwargs)
        raise _Connected
    return client


def test_frames_bench_reads_the_served_settings_with_the_security_flags(monkeypatch):
    """`bench --url --input ...` against a secured server: its first call (the served engine's
    settings) carries --ssl and --api-key. No server: the client is a recorder."""
    from boxinst_serve.apps.bench import frames
    from boxinst_serve.cli import main

    calls = []
    monkeypatch.setattr(frames, "BoxInstClient", _recording_client(calls))
    with pytest.raises(_Connected):
        main(["bench", "--url", "127.0.0.1:1", "--input", "png", *SECURITY_FLAGS])
    assert calls[0]["ssl"] is True and calls[0]["api_key"] == "k3y"


@pytest.mark.parametrize("mode", ["png", "raw", "shm"])
def test_frames_bench_sends_its_requests_with_the_security_flags(monkeypatch, mode):
    """The measured requests (and the statistics, read through the same client) carry them too."""
    from boxinst_serve.apps.bench import frames
    from boxinst_serve.cli import main

    calls = []
    monkeypatch.setattr(frames, "served_engine_settings", lambda url, client_kwargs=None: {"threads": 1,
                                                                                          "spinning": False})
    monkeypatch.setattr(frames, "in_process_runner", lambda repository, threads=0, spinning=True: None)
    monkeypatch.setattr(frames, "BoxInstClient", _recording_client(calls))
    with pytest.raises(_Connected):
        main(["bench", "--url", "127.0.0.1:1", "--input", mode, "--frames", "64x64", *SECURITY_FLAGS])
    [kwargs] = calls
    assert kwargs["ssl"] is True and kwargs["api_key"] == "k3y"
