"""AdelaiDet's own outputs (../shared/oracle/adelaidet_r50) through a real `boxinst serve`: the
imported checkpoint exported with `boxinst export --triton --flavour cpu` (and `--flavour openvino`:
the network step on OpenVINO), then its four photos
(square, wide with the size cap, a pair side by side, a downscale) sent as encoded images to the
`boxinst` ensemble, as raw frames to the one-process raw model, and as raw frames through shared
memory to the `boxinst_raw` ensemble. Every path must give what AdelaiDet gives, with the
in-process tolerances (tests/parity.py). Skips in a user's clone, where ../shared is absent; CI
runs it (BOXINST_REQUIRE_ALL)."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("pytriton", reason="nvidia-pytriton (the serve extra) ships the tritonserver binary")
pytest.importorskip("tritonclient.grpc")

from boxinst_serve.client import BoxInstClient  # noqa: E402
from boxinst_serve.protocol import FUSED_RAW_MODEL, RAW_MODEL  # noqa: E402
from boxinst_serve.preprocess import read_image  # noqa: E402
from tests.parity import ORACLE, ORACLE_IMAGES, check_against_oracle  # noqa: E402
from tests.servers import repository_copy, running_server  # noqa: E402


def _serve_oracle(tmp_path_factory, flavour: str):
    if not (ORACLE / "boxinst_r50_random.pth").exists():
        pytest.skip(f"the AdelaiDet oracle is not here ({ORACLE}): it ships with the project's CI, not with a clone")
    from boxinst_serve.cli import main

    root = tmp_path_factory.mktemp(f"served_oracle_{flavour}")
    imported = root / "imported.pt"
    assert main(["import-weights", str(ORACLE / "boxinst_r50_random.pth"), "--out", str(imported)]) == 0
    repo = repository_copy(root / "model_repository")
    assert main(["export", "--checkpoint", str(imported), "--triton", str(repo), "--flavour", flavour]) == 0
    from boxinst_serve.serving import ServingConfig

    cfg = ServingConfig.load(repo).model
    with running_server(repo, root) as server:
        yield {**server, "cfg": cfg}


@pytest.fixture(scope="module")
def oracle_server(tmp_path_factory):
    yield from _serve_oracle(tmp_path_factory, "cpu")


@pytest.fixture(scope="module")
def openvino_oracle_server(tmp_path_factory):
    pytest.importorskip("openvino", reason="the openvino extra (`pip install 'boxinst-serve[openvino]'`)")
    yield from _serve_oracle(tmp_path_factory, "openvino")


PATHS = {
    "encoded image, boxinst ensemble": dict(kwargs={}, raw=False, model=None),
    "raw frame, one-process model": dict(kwargs={}, raw=True, model=FUSED_RAW_MODEL),
    "raw frame in shared memory, boxinst_raw ensemble": dict(kwargs={"raw_model": RAW_MODEL, "shared_memory": True},
                                                             raw=True, model=RAW_MODEL),
}


@pytest.mark.parametrize("path", list(PATHS))
def test_served_oracle_photos_give_adelaidets_outputs(oracle_server, path):
    _check_served(oracle_server, path)


# The openvino flavour has no one-process raw model (it is ONNX Runtime's): its two ensembles.
@pytest.mark.parametrize("path", [p for p in PATHS if PATHS[p]["model"] != FUSED_RAW_MODEL])
def test_served_openvino_flavour_gives_adelaidets_outputs(openvino_oracle_server, path):
    _check_served(openvino_oracle_server, path)


def _check_served(server: dict, path: str) -> None:
    how = PATHS[path]
    cfg = server["cfg"]
    with BoxInstClient(server["url"], timeout_s=120, **how["kwargs"]) as client:
        if how["model"]:
            assert client.raw_model == how["model"]
        for name in ORACLE_IMAGES:
            file = ORACLE / "images" / f"{name}.png"
            got = client.segment(read_image(file) if how["raw"] else Path(file).read_bytes(), mask_format="rle")
            check_against_oracle(name, got.boxes, got.scores, got.classes, got.masks, cfg.score_thresh,
                                 cfg.max_detections, f"served ({path})")
