"""The security settings of a `boxinst serve` server (docs/deployment.md, "Securing a server"):
TLS on gRPC (mutual when a client CA is given), an API key that Triton itself checks on every
protocol but health, and the rule on which addresses a server may listen.

Measured on the tritonserver 2.51 of nvidia-pytriton 0.7.0:
- `--grpc-restricted-protocol` / `--http-restricted-api` take `<protocols>:<key>=<value>` (colon,
  as PyTriton builds it). The comma form that `--help` prints (`<protocols>,<key>=<value>`) stops
  the server at start: `Bad option: "--grpc-restricted-protocol". ... format is
  '<config name>:<setting>=<value>'`. The value is split at the first ':' and the first '=', so a
  key may contain ':', '=' and ','.
- Over gRPC the server expects the header with a `triton-grpc-protocol-` prefix
  (protocol.GRPC_API_KEY_HEADER); over HTTP the header as given (protocol.API_KEY_HEADER). A missing
  or wrong key gets UNAVAILABLE "This protocol is restricted, expecting header ..." (HTTP 403).
  Health (server live/ready, model ready) is not restricted.
- TLS exists for gRPC only (`--grpc-use-ssl*`); HTTP and metrics have none, so they stay on
  127.0.0.1 (TritonServer.http_host / metrics_host) whatever gRPC binds to.
- The key is on tritonserver's command line (no other way in 2.51): local users can read it in the
  process list; it is not written to the server's log.

Stdlib only (plus protocol.py's constants)."""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from boxinst_serve.protocol import API_KEY_HEADER, GRPC_API_KEY_HEADER

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
# What the key guards (Triton's names; the same list for gRPC and HTTP). Health stays open so that
# load balancers and orchestrators can probe without the key; metadata (server version, models'
# inputs and outputs) is guarded too.
RESTRICTED_PROTOCOLS = ("inference", "shared-memory", "model-repository", "model-config", "statistics", "trace",
                        "logging", "metadata")
# Where the server connects to itself (readiness, the supervisor) when it listens on every address.
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def _readable(path, flag: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"{flag}: '{p}' does not exist or is not a file")
    if not os.access(p, os.R_OK):
        raise ValueError(f"{flag}: '{p}' is not readable by this user")
    return p.resolve()


def _pem(path: Path, flag: str, marker: str, what: str) -> Path:
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        raise ValueError(f"{flag}: cannot read '{path}': {e}") from e
    if marker not in text:
        raise ValueError(f"{flag}: '{path}' holds no PEM {what} (no '{marker}' line)")
    return path


def check_api_key(key: str, flag: str = "--api-key") -> str:
    """A key as gRPC and HTTP headers can carry it: printable ASCII, no spaces; not empty."""
    if not key:
        raise ValueError(f"{flag}: the API key is empty")
    if not all(33 <= ord(c) <= 126 for c in key):
        raise ValueError(f"{flag}: the API key must be printable ASCII without spaces (a header value)")
    return key


@dataclass(frozen=True)
class Security:
    """tls_cert / tls_key: the server's PEM certificate (chain) and key: gRPC over TLS.
    tls_client_ca: PEM CA(s) client certificates must be signed by: mutual TLS (needs tls_cert).
    api_key: callers must send it (header protocol.GRPC_API_KEY_HEADER over gRPC) for everything but
    health. Build it with Security.load, which checks the files."""

    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    api_key: str | None = field(default=None, repr=False)  # never in a repr or a log line

    def __post_init__(self):
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together (the server's certificate and its private key)")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca (mutual TLS) needs the server's own certificate: give --tls-cert "
                             "and --tls-key too")
        if self.api_key is not None:
            check_api_key(self.api_key)

    @classmethod
    def load(cls, tls_cert=None, tls_key=None, tls_client_ca=None, api_key: str | None = None,
             api_key_file=None) -> "Security":
        """The settings from the command line's values (paths may be str), checked: the files exist,
        are readable and hold PEM; cert and key together; the client CA only with them; the key
        given once, read from its file and stripped; an empty key refused. ValueError names the flag."""
        if (tls_cert is None) != (tls_key is None):
            given, missing = ("--tls-cert", "--tls-key") if tls_key is None else ("--tls-key", "--tls-cert")
            raise ValueError(f"{given} needs {missing}: the server's certificate and its private key go together")
        if tls_client_ca is not None and tls_cert is None:
            raise ValueError("--tls-client-ca (mutual TLS) needs the server's own certificate: give --tls-cert "
                             "and --tls-key too")
        cert = key = ca = None
        if tls_cert is not None:
            cert = _pem(_readable(tls_cert, "--tls-cert"), "--tls-cert", "-----BEGIN CERTIFICATE-----", "certificate")
            key = _pem(_readable(tls_key, "--tls-key"), "--tls-key", "PRIVATE KEY-----", "private key")
        if tls_client_ca is not None:
            ca = _pem(_readable(tls_client_ca, "--tls-client-ca"), "--tls-client-ca", "-----BEGIN CERTIFICATE-----",
                      "CA certificate")
        if api_key is not None and api_key_file is not None:
            raise ValueError("give the key once: --api-key or --api-key-file, not both")
        if api_key_file is not None:
            path = _readable(api_key_file, "--api-key-file")
            api_key = check_api_key(path.read_text(errors="strict").strip(), f"--api-key-file ('{path}')")
        elif api_key is not None:
            api_key = check_api_key(api_key.strip(), "--api-key")
        return cls(tls_cert=cert, tls_key=key, tls_client_ca=ca, api_key=api_key)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def mutual(self) -> bool:
        return self.tls_client_ca is not None

    def tritonserver_args(self) -> list[str]:
        """tritonserver flags for these settings (colon syntax of the restrictions: module docstring)."""
        args = []
        if self.tls:
            args += ["--grpc-use-ssl=true", f"--grpc-server-cert={self.tls_cert}", f"--grpc-server-key={self.tls_key}"]
            if self.mutual:
                args += ["--grpc-use-ssl-mutual=true", f"--grpc-root-cert={self.tls_client_ca}"]
        if self.api_key is not None:
            protocols = ",".join(RESTRICTED_PROTOCOLS)
            args += [f"--grpc-restricted-protocol={protocols}:{API_KEY_HEADER}={self.api_key}",
                     f"--http-restricted-api={protocols}:{API_KEY_HEADER}={self.api_key}"]
        return args

    def grpc_headers(self) -> dict[str, str] | None:
        """The gRPC headers a request needs (None without a key)."""
        return None if self.api_key is None else {GRPC_API_KEY_HEADER: self.api_key}

    def own_client_options(self, connect_host: str) -> dict:
        """tritonclient.grpc.InferenceServerClient keyword arguments for the server's own
        connection to itself (readiness, the supervisor) at connect_host: it trusts the server's
        certificate itself (gRPC accepts a CA-signed leaf as the root: measured), presents it as
        its client certificate under mutual TLS (so it must be signed by the client CA too), and
        checks it under a name the certificate holds when connect_host is not one of them."""
        if not self.tls:
            return {}
        options = {"ssl": True, "root_certificates": str(self.tls_cert)}
        if self.mutual:
            options.update(private_key=str(self.tls_key), certificate_chain=str(self.tls_cert))
        names = certificate_names(self.tls_cert)
        if names and connect_host.strip("[]") not in names:
            options["channel_args"] = [("grpc.ssl_target_name_override", names[0])]
        return options


def certificate_names(cert: Path) -> list[str]:
    """The DNS names and IP addresses of a PEM certificate's subjectAltName (else its common name);
    [] when Python cannot decode it."""
    import ssl

    try:
        decoded = ssl._ssl._test_decode_cert(str(cert))  # CPython's decoder (no `cryptography` needed)
    except Exception:  # noqa: BLE001 - private API or an undecodable file: no name override then
        return []
    names = [v for k, v in decoded.get("subjectAltName", ()) if k in ("DNS", "IP Address")]
    if not names:
        names = [v for rdn in decoded.get("subject", ()) for k, v in rdn if k == "commonName"]
    return names


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, security: Security | None, insecure: bool = False, http_host: str = "127.0.0.1",
                   metrics_host: str = "127.0.0.1") -> None:
    """Refuse (ValueError) to listen beyond this machine without protection: gRPC on a host other
    than loopback needs TLS and an API key, unless `insecure`; HTTP and metrics have no TLS in
    Triton 2.51, so they may leave loopback only with `insecure`."""
    if insecure:
        return
    if not is_loopback(host):
        missing = []
        if security is None or not security.tls:
            missing.append("TLS (--tls-cert/--tls-key)")
        if security is None or security.api_key is None:
            missing.append("an API key (--api-key or --api-key-file)")
        if missing:
            raise ValueError(f"--host {host} exposes the gRPC port beyond this machine without "
                             f"{' and '.join(missing)}: give --tls-cert/--tls-key and --api-key (or --api-key-file), "
                             "or --insecure to serve unprotected (a trusted network only)")
    for name, h in (("HTTP", http_host), ("metrics", metrics_host)):
        if not is_loopback(h):
            raise ValueError(f"the {name} endpoint on {h}: Triton 2.51 has no TLS for it, so it stays on 127.0.0.1 "
                             "(only --insecure lets it out)")
