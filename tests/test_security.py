"""A secured `boxinst serve` (issue: TLS and keys): gRPC over TLS, mutual TLS and an API key that
Triton checks, against the real tritonserver; the settings' validation and the exposure rule
without one. One server (TLS + client CA + key) covers the server-side cases; every wait is bounded.
Certificates are made at test time with the openssl CLI."""
from __future__ import annotations

import asyncio
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.servers import assert_same, encode

grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

from boxinst_serve.client import AsyncBoxInstClient, BoxInstClient, BoxInstError  # noqa: E402
from boxinst_serve.protocol import API_KEY_ENV, API_KEY_HEADER, GRPC_API_KEY_HEADER, NET_MODEL  # noqa: E402
from boxinst_serve.serving.security import RESTRICTED_PROTOCOLS, Security, check_exposure  # noqa: E402
from boxinst_serve.serving.server import TritonServer, free_port, which_tritonserver  # noqa: E402

KEY = "k3y:with=odd,chars!"  # ':', '=' and ',' survive Triton's flag parsing (serving/security.py)
# The deadline of a call that must answer (metadata, health): far over the milliseconds it takes, so
# that a slow machine never turns an answer into a timeout (issue 27); a refusal is told from a
# timeout by its message.
CALL_S = 30
# What a client without a certificate gets from a server that asks for one (not a timeout).
HANDSHAKE_REFUSED = "StatusCode.UNAVAILABLE"
needs_server = pytest.mark.skipif(which_tritonserver() is None, reason="no tritonserver binary (nvidia-pytriton)")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_certs(root: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 / localhost and a client certificate it signed (EC keys)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI makes the test certificates")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=boxinst test CA",
             cwd=root)
    (root / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    (root / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for who, subject in (("server", "/CN=localhost"), ("client", "/CN=boxinst robot")):
        _openssl("req", *ec, "-keyout", f"{who}.key", "-out", f"{who}.csr", "-subj", subject, cwd=root)
        _openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{who}.pem", "-days", "2", "-extfile", f"{who}.ext", cwd=root)
    return {name: root / f"{name}" for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, Path]:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def secured(trained_lite, lite_onnx, tiny_shapes, certs, tmp_path_factory):
    """One server: TLS with a client CA (mutual) and an API key (from a file)."""
    from export.triton import write_triton_net

    from tests.reference import TorchReference
    from tests.servers import repository_copy

    root = tmp_path_factory.mktemp("secured")
    repo = repository_copy(root / "model_repository")
    write_triton_net(trained_lite, repo, flavour="cpu", onnx_path=lite_onnx)  # the session's export, not another
    key_file = root / "api.key"
    key_file.write_text(f"  {KEY}\n")
    security = Security.load(tls_cert=certs["server.pem"], tls_key=certs["server.key"],
                             tls_client_ca=certs["ca.pem"], api_key_file=key_file)
    server = TritonServer(repo, grpc_port=0, http_port=0, metrics_port=0, security=security)
    server.start(240)  # its own readiness checks go over mutual TLS with the key
    try:
        yield {"server": server, "url": server.grpc_url, "repo": repo,
               "reference": TorchReference(trained_lite),
               "images": sorted(Path(tiny_shapes["images"]).glob("*.png"))[:2]}
    finally:
        server.stop()


def tls(certs, client_cert: bool = True) -> dict:
    kw = {"root_certificates": certs["ca.pem"]}
    if client_cert:
        kw.update(private_key=certs["client.key"], certificate_chain=certs["client.pem"])
    return kw


def raw_client(secured, certs, client_cert: bool = True):
    """A bare tritonclient over TLS (no key unless headers= are passed)."""
    return grpcclient.InferenceServerClient(secured["url"], ssl=True,
                                            **{k: str(v) for k, v in tls(certs, client_cert).items()})


def reference(secured, data: bytes):
    """The checkpoint's torch model on the single image, pre- and post-processed by
    tests/reference.py (no code shared with the server's steps), as tests/test_serving.py's."""
    return secured["reference"](data)


# -- no server -------------------------------------------------------------------------------------

def test_security_load_validates_and_names_the_flag(certs, tmp_path):
    cert, key, ca = certs["server.pem"], certs["server.key"], certs["ca.pem"]
    cases = [
        (dict(tls_cert=cert), "--tls-key"),
        (dict(tls_key=key), "--tls-cert"),
        (dict(tls_client_ca=ca), "--tls-client-ca"),
        (dict(tls_cert=tmp_path / "missing.pem", tls_key=key), "--tls-cert"),
        (dict(tls_cert=cert, tls_key=cert), "--tls-key"),  # a certificate is no private key
        (dict(tls_cert=cert, tls_key=key, tls_client_ca=key), "--tls-client-ca"),
        (dict(api_key=""), "--api-key"),
        (dict(api_key="two words"), "--api-key"),
        (dict(api_key="a", api_key_file=cert), "--api-key-file"),
        (dict(api_key_file=tmp_path / "nokey"), "--api-key-file"),
    ]
    (tmp_path / "empty").write_text(" \n")
    cases.append((dict(api_key_file=tmp_path / "empty"), "--api-key-file"))
    for kwargs, flag in cases:
        with pytest.raises(ValueError, match=flag):
            Security.load(**kwargs)
    (tmp_path / "key").write_text(f"{KEY}\n")
    s = Security.load(tls_cert=str(cert), tls_key=str(key), tls_client_ca=str(ca), api_key_file=tmp_path / "key")
    assert s.api_key == KEY and s.tls and s.mutual
    assert KEY not in repr(s)  # never in a log line
    with pytest.raises(ValueError, match="--tls-key"):
        Security(tls_cert=cert)  # direct construction checks the pairing too


def test_tritonserver_args_use_the_colon_syntax_and_leave_health_open(certs):
    s = Security(certs["server.pem"], certs["server.key"], certs["ca.pem"], api_key=KEY)
    args = s.tritonserver_args()
    assert "--grpc-use-ssl=true" in args and "--grpc-use-ssl-mutual=true" in args
    assert f"--grpc-root-cert={certs['ca.pem']}" in args
    protocols = ",".join(RESTRICTED_PROTOCOLS)
    assert f"--grpc-restricted-protocol={protocols}:{API_KEY_HEADER}={KEY}" in args
    assert f"--http-restricted-api={protocols}:{API_KEY_HEADER}={KEY}" in args
    assert "health" not in RESTRICTED_PROTOCOLS and "inference" in RESTRICTED_PROTOCOLS
    assert Security().tritonserver_args() == []
    assert Security(api_key=KEY).grpc_headers() == {GRPC_API_KEY_HEADER: KEY}
    # The server's own client trusts its certificate and checks a name it holds.
    own = s.own_client_options("127.0.0.1")
    assert own["certificate_chain"] == own["root_certificates"] == str(certs["server.pem"])
    assert "channel_args" not in own
    assert s.own_client_options("10.1.2.3")["channel_args"] == [("grpc.ssl_target_name_override", "127.0.0.1")]


def test_exposed_grpc_needs_tls_and_a_key_and_http_stays_on_loopback(certs):
    both = Security(certs["server.pem"], certs["server.key"], api_key=KEY)
    for security in (None, Security(api_key=KEY), Security(certs["server.pem"], certs["server.key"])):
        with pytest.raises(ValueError) as e:
            check_exposure("0.0.0.0", security, insecure=False)
        for flag in ("--tls-cert/--tls-key", "--api-key", "--insecure"):
            assert flag in str(e.value)
    check_exposure("0.0.0.0", both, insecure=False)
    check_exposure("0.0.0.0", None, insecure=True)
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        check_exposure(host, None, insecure=False)
    with pytest.raises(ValueError, match="no TLS"):
        check_exposure("0.0.0.0", both, insecure=False, http_host="0.0.0.0")
    # TritonServer: gRPC on the host, HTTP and metrics on loopback, the security flags appended.
    cmd = TritonServer(Path("repo"), host="0.0.0.0", security=both).command(Path("backends"))
    assert "--grpc-address=0.0.0.0" in cmd
    assert "--http-address=127.0.0.1" in cmd and "--metrics-address=127.0.0.1" in cmd
    assert cmd[-len(both.tritonserver_args()):] == both.tritonserver_args()


def test_client_tls_options_and_the_key_from_the_environment(certs, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="root_certificates"):
        BoxInstClient("127.0.0.1:1", root_certificates=tmp_path / "none.pem")
    with pytest.raises(ValueError, match="certificate_chain"):
        BoxInstClient("127.0.0.1:1", root_certificates=certs["ca.pem"], private_key=certs["client.key"])
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    with BoxInstClient("127.0.0.1:1") as c:
        assert c.headers is None and not c.tls
    monkeypatch.setenv(API_KEY_ENV, KEY)
    with BoxInstClient("127.0.0.1:1", root_certificates=certs["ca.pem"]) as c:  # a CA implies TLS
        assert c.headers == {GRPC_API_KEY_HEADER: KEY} and c.tls
    with BoxInstClient("127.0.0.1:1", api_key="other") as c:
        assert c.headers == {GRPC_API_KEY_HEADER: "other"}


# -- the secured server -----------------------------------------------------------------------------

@needs_server
def test_tls_round_trip_equals_in_process_and_plain_clients_get_a_clear_error(secured, certs):
    with BoxInstClient(secured["url"], timeout_s=30, ssl=True, api_key=KEY, **tls(certs)) as client:
        for path in secured["images"]:
            data = path.read_bytes()
            assert_same(client.segment(data), reference(secured, data))
        from boxinst_serve.preprocess import decode_image

        frame = decode_image(secured["images"][0].read_bytes())
        assert_same(client.segment(frame), reference(secured, encode(frame, ".png")))  # raw frame over TLS
    with BoxInstClient(secured["url"], timeout_s=10, api_key=KEY) as plain:
        with pytest.raises(BoxInstError, match="ssl=True"):
            plain.segment(secured["images"][0])
        assert not plain.is_ready()


@needs_server
def test_mutual_tls_refuses_a_client_without_a_certificate(secured, certs):
    with BoxInstClient(secured["url"], timeout_s=10, api_key=KEY, **tls(certs, client_cert=False)) as client:
        with pytest.raises(BoxInstError, match="certificate_chain"):
            client.segment(secured["images"][0])
    health = raw_client(secured, certs, client_cert=False)
    with pytest.raises(InferenceServerException, match=HANDSHAKE_REFUSED):  # not even health
        health.is_server_live(client_timeout=CALL_S)
    health.close()


@needs_server
def test_the_api_key_guards_everything_but_health(secured, certs, monkeypatch):
    import tritonclient.utils.shared_memory as shm

    monkeypatch.delenv(API_KEY_ENV, raising=False)
    data = secured["images"][0].read_bytes()
    with BoxInstClient(secured["url"], timeout_s=10, **tls(certs)) as client:
        with pytest.raises(BoxInstError, match="API key"):
            client.segment(data)
        assert client.is_ready()  # health answers without the key
    with BoxInstClient(secured["url"], timeout_s=10, api_key="wrong", **tls(certs)) as client:
        with pytest.raises(BoxInstError, match="API key"):
            client.segment(data)
    with pytest.raises(BoxInstError, match="API key"):
        BoxInstClient(secured["url"], timeout_s=10, shared_memory=True, **tls(certs))

    c = raw_client(secured, certs)
    good = {GRPC_API_KEY_HEADER: KEY}
    assert c.is_server_live(client_timeout=CALL_S) and c.is_server_ready(client_timeout=CALL_S)
    assert c.is_model_ready(NET_MODEL, client_timeout=CALL_S)
    for call in (lambda h: c.get_inference_statistics(headers=h, client_timeout=CALL_S),
                 lambda h: c.get_model_config(NET_MODEL, headers=h, client_timeout=CALL_S),
                 lambda h: c.get_model_repository_index(headers=h, client_timeout=CALL_S),
                 lambda h: c.get_server_metadata(headers=h, client_timeout=CALL_S),
                 lambda h: c.get_system_shared_memory_status(headers=h, client_timeout=CALL_S)):
        with pytest.raises(InferenceServerException, match="restricted"):
            call(None)
        call(good)
    name = f"boxinst_sectest_{free_port()}"
    handle = shm.create_shared_memory_region(name, "/" + name, 64)
    try:
        with pytest.raises(InferenceServerException, match="restricted"):
            c.register_system_shared_memory(name, "/" + name, 64, client_timeout=CALL_S)
        c.register_system_shared_memory(name, "/" + name, 64, headers=good, client_timeout=CALL_S)
        assert name in c.get_system_shared_memory_status(as_json=True, headers=good)["regions"]
        c.unregister_system_shared_memory(name, headers=good, client_timeout=CALL_S)
    finally:
        shm.destroy_shared_memory_region(handle)
        c.close()

    # With the key (here from the environment) inference and shared memory work, also asyncio.
    monkeypatch.setenv(API_KEY_ENV, KEY)
    from boxinst_serve.preprocess import decode_image

    frame = decode_image(data)
    with BoxInstClient(secured["url"], timeout_s=30, shared_memory=True, **tls(certs)) as client:
        assert_same(client.segment(frame), reference(secured, encode(frame, ".png")))

    async def run():
        async with AsyncBoxInstClient(secured["url"], timeout_s=30, **tls(certs)) as ac:
            return await ac.segment(data)

    assert_same(asyncio.run(run()), reference(secured, data))

    # HTTP (loopback only, no TLS in 2.51) checks the same key; its health is open too.
    server = secured["server"]
    base = f"http://{server.http_host}:{server.http_port}"
    assert urllib.request.urlopen(f"{base}/v2/health/ready", timeout=CALL_S).status == 200
    with pytest.raises(urllib.error.HTTPError, match="403"):
        urllib.request.urlopen(f"{base}/v2/models/stats", timeout=CALL_S)
    req = urllib.request.Request(f"{base}/v2/models/stats", headers={API_KEY_HEADER: KEY})
    assert urllib.request.urlopen(req, timeout=CALL_S).status == 200

    # The server's own client (readiness, the supervisor) connects over mutual TLS with the key.
    own = server.grpc_client()
    try:
        stats = own.get_inference_statistics(NET_MODEL, as_json=True, client_timeout=CALL_S)["model_stats"]
        assert [m["name"] for m in stats] == [NET_MODEL]
        assert int(stats[0]["inference_stats"]["success"]["count"]) > 0  # the inferences above
    finally:
        own.close()
