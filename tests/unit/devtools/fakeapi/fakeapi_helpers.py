"""Helpers for the stand-in API server tests: a tiny stdlib HTTP/JSON client and object builders."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

JSON = dict[str, Any]
SLICES = "/apis/resource.k8s.io/v1/resourceslices"
CLAIMS = "/apis/resource.k8s.io/v1/namespaces/default/resourceclaims"


@dataclass(frozen=True)
class Reply:
    status: int
    body: JSON


class Api:
    """Plain HTTP/JSON calls against the server (one connection per call)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80

    def _conn(self, timeout: float = 10.0) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def call(self, method: str, path: str, body: object = None, **params: str) -> Reply:
        conn = self._conn()
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, _with_query(path, params), body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            return Reply(response.status, json.loads(raw) if raw and raw != b"ok" else {})
        finally:
            conn.close()

    def get(self, path: str, **params: str) -> Reply:
        return self.call("GET", path, **params)

    def post(self, path: str, body: object, **params: str) -> Reply:
        return self.call("POST", path, body, **params)

    def put(self, path: str, body: object) -> Reply:
        return self.call("PUT", path, body)

    def delete(self, path: str, body: object = None, **params: str) -> Reply:
        return self.call("DELETE", path, body, **params)

    def watch(self, path: str, **params: str) -> Iterator[JSON]:
        """Watch events, one per line, until the server ends the stream."""
        conn = self._conn(timeout=30.0)
        try:
            conn.request("GET", _with_query(path, {"watch": "true", **params}))
            response = conn.getresponse()
            assert response.status == 200
            while line := response.readline():
                yield json.loads(line)
        finally:
            conn.close()


def _with_query(path: str, params: dict[str, str]) -> str:
    return f"{path}?{urlencode(params)}" if params else path


def device(name: str = "gpu-0", **extra: Any) -> JSON:
    return {
        "name": name,
        "attributes": {"productName": {"string": "NVIDIA H100 80GB HBM3"}, "index": {"int": 0}},
        "capacity": {"memory": {"value": "80Gi"}},
        **extra,
    }


def resource_slice(
    name: str = "node-1-gpudra.io-abcde", devices: list[JSON] | None = None, **spec: Any
) -> JSON:
    """A valid ResourceSlice body (node-local), with optional spec overrides."""
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": name},
        "spec": {
            "driver": "gpudra.io",
            "nodeName": "node-1",
            "pool": {"name": "node-1", "generation": 1, "resourceSliceCount": 1},
            "devices": [device()] if devices is None else devices,
            **spec,
        },
    }


def claim(name: str = "claim-1") -> JSON:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name},
        "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu.gpudra.io"}}]}},
    }
