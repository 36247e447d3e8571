"""``KubeClient.get_claim``'s keep-alive transport, and the watch stream, over TLS: a throwaway CA and client
certificates made with the ``openssl`` CLI, a real handshake against the scripted server of
:mod:`tests.unit.test_kube_http`."""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gpudra.kube.client import KubeError
from tests.unit.test_kube_http import client, scripted, write_kubeconfig

# ---- TLS ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.server_cert, self.server_key)
        ctx.load_verify_locations(self.ca)
        ctx.verify_mode = ssl.CERT_REQUIRED  # the client must present a certificate of our CA
        return ctx


def _openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _issue(d: Path, ca: str, name: str, *extra: str) -> None:
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(d, "req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", *extra)
    _openssl(d, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "2", "-copy_extensions", "copy", "-out", f"{name}.crt")  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is needed to make a throwaway CA")
    d = tmp_path_factory.mktemp("pki")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-x509", "-days", "2")
    for ca in ("ca", "other-ca"):
        _openssl(d, "req", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-subj", f"/CN={ca}")
    _issue(d, "ca", "server", "-addext", "subjectAltName=IP:127.0.0.1")
    _issue(d, "ca", "gpudra-client")
    return Pki(d / "ca.crt", d / "other-ca.crt", d / "server.crt", d / "server.key",
               d / "gpudra-client.crt", d / "gpudra-client.key")  # fmt: skip


def _data(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@pytest.mark.parametrize("form", ["files", "data", "insecure"])
def test_tls_with_a_ca_and_a_client_certificate(pki: Pki, tmp_path: Path, form: str) -> None:
    cluster: dict[str, Any]
    if form == "files":  # relative to the kubeconfig, as kubectl reads them
        for src in (pki.ca, pki.client_cert, pki.client_key):
            shutil.copy(src, tmp_path / src.name)
        cluster = {"certificate-authority": pki.ca.name}
        user = {"client-certificate": pki.client_cert.name, "client-key": pki.client_key.name}
    else:
        cluster = {"certificate-authority-data": _data(pki.ca)}
        if form == "insecure":
            cluster = {"insecure-skip-tls-verify": True}
        user = {"client-certificate-data": _data(pki.client_cert), "client-key-data": _data(pki.client_key)}
    with (
        scripted(tls=pki.server_context()) as server,
        client(write_kubeconfig(tmp_path / "kc", server.url, cluster, **user)) as kube,
    ):
        for _ in range(3):
            assert kube.get_claim("default", "c1")["metadata"]["name"] == "c1"
    assert [s.client_cert for s in server.seen] == [ssl.PEM_cert_to_DER_cert(pki.client_cert.read_text())] * 3
    assert server.connections() == 1
    assert all(s.user_agent == "gpudra" for s in server.seen)


def test_tls_with_the_wrong_ca_is_unreachable(pki: Pki, tmp_path: Path) -> None:
    cluster = {"certificate-authority-data": _data(pki.other_ca)}
    user = {"client-certificate-data": _data(pki.client_cert), "client-key-data": _data(pki.client_key)}
    with scripted(tls=pki.server_context()) as server:
        with (
            client(write_kubeconfig(tmp_path / "kc", server.url, cluster, **user)) as kube,
            pytest.raises(KubeError) as err,
        ):
            kube.get_claim("default", "c1")
        assert server.seen == []
        # the same server answers a client that trusts its CA: nothing was seen because the client refused
        trusted = {"certificate-authority-data": _data(pki.ca)}
        with client(write_kubeconfig(tmp_path / "kc-trusted", server.url, trusted, **user)) as kube:
            assert kube.get_claim("default", "c1")["metadata"]["name"] == "c1"
        assert len(server.seen) == 1
    assert err.value.code is None
    assert "SSLCertVerificationError" in str(err.value)


def test_the_watch_stream_uses_the_same_tls_client_certificate_and_token(pki: Pki, tmp_path: Path) -> None:
    event = {"type": "ADDED", "object": {"metadata": {"name": "s1", "resourceVersion": "2"}}}
    cluster = {"certificate-authority-data": _data(pki.ca)}
    user = {
        "client-certificate-data": _data(pki.client_cert),
        "client-key-data": _data(pki.client_key),
        "token": "t0k",
    }
    line = json.dumps(event).encode() + b"\n"
    with (
        scripted(lambda path, auth: (200, line, True), pki.server_context()) as server,
        client(write_kubeconfig(tmp_path / "kc", server.url, cluster, **user)) as kube,
    ):
        first = next(iter(kube.watch_slices("node-a", "1")))  # the one event; then the server hangs up
    assert (first.type, first.object.get("metadata", {}).get("name")) == ("ADDED", "s1")
    seen = server.seen[0]
    assert seen.client_cert == ssl.PEM_cert_to_DER_cert(pki.client_cert.read_text())
    assert seen.auth == "Bearer t0k"
    assert seen.path.startswith("/apis/resource.k8s.io/v1/resourceslices?")
    assert "watch=true" in seen.path
    assert "allowWatchBookmarks=true" in seen.path
