"""Lint and render the gpudra chart with the real Helm v4 engine (the ``helm-sdkpy`` package).

Runs in the Helm tool virtualenv (.ci/run makes it; ``$HELM_SDKPY_PYTHON`` is its interpreter), with the
standard library and helm_sdkpy only. helm-sdkpy has no ``helm template``: rendering is a real ``helm
install`` (no hooks, no wait) against a stand-in API server in this process that knows the kinds the chart
uses, answers "not found" to every lookup and accepts every create. The release's manifest is what Helm
rendered.

    python helm_sdk.py lint CHART VALUES.json     # VALUES.json replaces the chart's values.yaml
    python helm_sdk.py render CHART < REQUESTS.json

lint prints ``{"messages": [{"severity": "WARNING", "path": "templates/x.yaml"}, ...]}`` (INFO ones too) and
exits 1 when a message is a WARNING or an ERROR. render reads a JSON list of ``{"release", "namespace",
"values", "kubeVersion"}`` (values are merged over the chart's, as ``--set`` does) and prints a list of
``{"manifest": "..."}`` or ``{"error": "..."}``, one per request.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

#: (group, version) -> [(plural, kind, namespaced)]: what the stand-in API's discovery lists.
RESOURCES: dict[tuple[str, str], list[tuple[str, str, bool]]] = {
    ("", "v1"): [
        ("namespaces", "Namespace", False),
        ("serviceaccounts", "ServiceAccount", True),
        ("services", "Service", True),
        ("secrets", "Secret", True),
        ("resourcequotas", "ResourceQuota", True),
        ("pods", "Pod", True),
        ("configmaps", "ConfigMap", True),
    ],
    ("apps", "v1"): [("daemonsets", "DaemonSet", True)],
    ("rbac.authorization.k8s.io", "v1"): [
        ("clusterroles", "ClusterRole", False),
        ("clusterrolebindings", "ClusterRoleBinding", False),
        ("roles", "Role", True),
        ("rolebindings", "RoleBinding", True),
    ],
    ("admissionregistration.k8s.io", "v1"): [
        ("validatingadmissionpolicies", "ValidatingAdmissionPolicy", False),
        ("validatingadmissionpolicybindings", "ValidatingAdmissionPolicyBinding", False),
    ],
    ("networking.k8s.io", "v1"): [("networkpolicies", "NetworkPolicy", True)],
    ("resource.k8s.io", "v1"): [
        ("deviceclasses", "DeviceClass", False),
        ("resourceclaims", "ResourceClaim", True),
        ("resourceslices", "ResourceSlice", False),
    ],
    ("monitoring.coreos.com", "v1"): [("servicemonitors", "ServiceMonitor", True)],
}
SEVERITIES = {1: "INFO", 2: "WARNING", 3: "ERROR"}


class _Api(BaseHTTPRequestHandler):
    """Discovery, 404 for every object, and creates and updates that return what they were sent."""

    version = "1.34.0"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _send(self, code: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        if path == "/version":
            major, minor, _ = self.version.split(".")
            return self._send(200, {"major": major, "minor": minor, "gitVersion": f"v{self.version}"})
        if path == "/api":
            return self._send(200, {"kind": "APIVersions", "versions": ["v1"]})
        if path == "/apis":
            groups = [
                {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v}],
                 "preferredVersion": {"groupVersion": f"{g}/{v}", "version": v}}
                for g, v in RESOURCES if g
            ]  # fmt: skip
            return self._send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        for (group, version), kinds in RESOURCES.items():
            if path == (f"/apis/{group}/{version}" if group else f"/api/{version}"):
                resources = [
                    {"name": plural, "singularName": kind.lower(), "namespaced": namespaced, "kind": kind,
                     "verbs": ["get", "list", "create", "update", "delete"]}
                    for plural, kind, namespaced in kinds
                ]  # fmt: skip
                gv = f"{group}/{version}" if group else version
                return self._send(
                    200, {"kind": "APIResourceList", "groupVersion": gv, "resources": resources}
                )
        if path.endswith("/secrets"):  # Helm's release storage: no earlier release
            return self._send(200, {"kind": "SecretList", "apiVersion": "v1", "metadata": {}, "items": []})
        not_found = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound"}
        return self._send(404, {**not_found, "code": 404})

    def _echo(self, code: int) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            obj = json.loads(body)
        except ValueError:  # Helm writes its release Secret as protobuf
            obj = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "release", "resourceVersion": "1"},
            }
        self._send(code, obj)

    def do_POST(self) -> None:
        self._echo(201)

    def do_PUT(self) -> None:
        self._echo(200)


def _serve() -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _kubeconfig(port: int, where: Path) -> Path:
    path = where / "kubeconfig"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "stand-in",
        "clusters": [{"name": "stand-in", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "stand-in", "user": {}}],
        "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "stand-in"}}],
    }))  # fmt: skip
    return path


def render(chart: str, requests: list[dict[str, Any]], home: Path) -> list[dict[str, str]]:
    import helm_sdkpy

    server = _serve()
    kubeconfig = str(_kubeconfig(server.server_address[1], home))
    out: list[dict[str, str]] = []
    try:
        for req in requests:
            _Api.version = req.get("kubeVersion", "1.34.0")
            config = helm_sdkpy.Configuration(namespace=req["namespace"], kubeconfig=kubeconfig)
            install = helm_sdkpy.Install(config)
            try:
                release = asyncio.run(install.run(req["release"], chart, values=req.get("values") or None,
                                                  wait=False, timeout=60))  # fmt: skip
                out.append({"manifest": release["manifest"]})
            except helm_sdkpy.HelmError as e:
                out.append({"error": str(e)})
    finally:
        server.shutdown()
    return out


def lint(chart: str, values: dict[str, Any], home: Path) -> tuple[list[dict[str, str]], bool]:
    import helm_sdkpy

    copy = home / Path(chart).name
    shutil.copytree(chart, copy, symlinks=False)  # what `helm package` does with links: their contents
    (copy / "values.yaml").write_text(json.dumps(values, indent=1))
    result = asyncio.run(helm_sdkpy.Lint(helm_sdkpy.Configuration()).run(str(copy)))
    messages = [
        {"severity": SEVERITIES.get(m["Severity"], str(m["Severity"])), "path": m["Path"]}
        for m in result.get("Messages") or []
    ]
    return messages, all(m["severity"] == "INFO" for m in messages) and not result.get("Errors")


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("lint", "render"):
        print(__doc__, file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="gpudra-helm-") as tmp:
        home = Path(tmp)
        for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
            os.environ[var] = str(home / var.lower())
        if argv[0] == "render":
            print(json.dumps(render(argv[1], json.load(sys.stdin), home)))
            return 0
        messages, clean = lint(argv[1], json.loads(Path(argv[2]).read_text()), home)
        print(json.dumps({"messages": messages}))
        return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
