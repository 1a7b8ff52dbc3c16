"""AdelaiDet's own outputs (../shared/oracle/adelaidet_r50) through a real `boxinst serve`: the
imported checkpoint exported with `boxinst export --triton --flavour cpu`, then its four photos
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


@pytest.fixture(scope="module")
def oracle_server(tmp_path_factory):
    if not (ORACLE / "boxinst_r50_random.pth").exists():
        pytest.skip(f"the AdelaiDet oracle is not here ({ORACLE}): it ships with the project's CI, not with a clone")
    from boxinst_serve.cli import main

    root = tmp_path_factory.mktemp("served_oracle")
    imported = root / "imported.pt"
    assert main(["import-weights", str(ORACLE / "boxinst_r50_random.pth"), "--out", str(imported)]) == 0
    repo = repository_copy(root / "model_repository")
    assert main(["export", "--checkpoint", str(imported), "--triton", str(repo), "--flavour", "cpu"]) == 0
    from boxinst_serve.serving import ServingConfig

    cfg = ServingConfig.load(repo).model
    with running_server(repo, root) as server:
        yield {**server, "cfg": cfg}


PATHS = {
    "encoded image, boxinst ensemble": dict(kwargs={}, raw=False, model=None),
    "raw frame, one-process model": dict(kwargs={}, raw=True, model=FUSED_RAW_MODEL),
    "raw frame in shared memory, boxinst_raw ensemble": dict(kwargs={"raw_model": RAW_MODEL, "shared_memory": True},
                                                             raw=True, model=RAW_MODEL),
}


@pytest.mark.parametrize("path", list(PATHS))
def test_served_oracle_photos_give_adelaidets_outputs(oracle_server, path):
    how = PATHS[path]
    cfg = oracle_server["cfg"]
    with BoxInstClient(oracle_server["url"], timeout_s=120, **how["kwargs"]) as client:
        if how["model"]:
            assert client.raw_model == how["model"]
        for name in ORACLE_IMAGES:
            file = ORACLE / "images" / f"{name}.png"
            got = client.segment(read_image(file) if how["raw"] else Path(file).read_bytes(), mask_format="rle")
            check_against_oracle(name, got.boxes, got.scores, got.classes, got.masks, cfg.score_thresh,
                                 cfg.max_detections, f"served ({path})")
