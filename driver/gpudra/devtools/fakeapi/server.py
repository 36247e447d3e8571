"""``FakeApiServer``: a small stand-in kube-apiserver on real HTTP, for the demo, tests and the benchmark."""

from __future__ import annotations

import contextlib
import copy
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml

from gpudra.devtools.fakeapi.gates import FeatureGates
from gpudra.devtools.fakeapi.handler import Handler
from gpudra.devtools.fakeapi.registry import Registry
from gpudra.devtools.fakeapi.resources import lookup
from gpudra.devtools.fakeapi.status import ApiError
from gpudra.devtools.fakeapi.store import Store
from gpudra.devtools.fakeapi.strategy import now_rfc3339

__all__ = ["FakeApiServer", "RecordedRequest"]

JSON = dict[str, Any]


@dataclass(frozen=True)
class RecordedRequest:
    """One answered request: ``path`` without the query; ``query`` holds the first value of each key."""

    method: str
    path: str
    query: dict[str, str] = field(hash=False)
    status: int
    time: float


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: FakeApiServer) -> None:
        self.app = app
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class FakeApiServer:
    """Serves ResourceSlices, ResourceClaims (+ ``/status``), DeviceClasses, Nodes and Events as JSON.

    ``feature_gates`` overrides the Kubernetes 1.34 defaults (``DRADeviceTaints``,
    ``DRAPartitionableDevices``, ``DRAConsumableCapacity``: all off); fields of a disabled feature are
    dropped on write.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        feature_gates: Mapping[str, bool] | None = None,
        *,
        kube_version: str = "1.34.0",
        history_size: int = 4096,
        bookmark_interval: float = 10.0,
    ) -> None:
        self.feature_gates = FeatureGates(feature_gates)
        self.store = Store(history_size)
        self.registry = Registry(self.store, self.feature_gates)
        self.kube_version = kube_version
        self.bookmark_interval = bookmark_interval
        self._http = _HttpServer((host, port), self)
        self.host = host
        self.port: int = self._http.server_address[1]
        self._thread: threading.Thread | None = None
        self._requests: list[RecordedRequest] = []
        self._requests_lock = threading.Lock()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # ---- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> Self:
        """Serve in a background thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._http.serve_forever, args=(0.5,), name="fakeapi", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: open watches end, connections close. The server cannot be started again."""
        self.store.close()
        if self._thread is not None:
            stopper = threading.Thread(target=self._http.shutdown, name="fakeapi-stop")
            stopper.start()
            while stopper.is_alive():  # wake the accept loop now instead of at its next poll
                self._poke()
                stopper.join(0.02)
            self._thread.join()
            self._thread = None
        self._http.close_connections()
        self._http.server_close()

    def _poke(self) -> None:
        with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=1):
            pass

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def write_kubeconfig(self, path: str | Path) -> Path:
        """Write a kubeconfig (no auth, namespace ``default``) pointing at this server."""
        target = Path(path)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fakeapi", "cluster": {"server": self.url}}],
            "users": [{"name": "fakeapi", "user": {}}],
            "contexts": [
                {
                    "name": "fakeapi",
                    "context": {"cluster": "fakeapi", "user": "fakeapi", "namespace": "default"},
                }
            ],
            "current-context": "fakeapi",
        }
        target.write_text(yaml.safe_dump(config, sort_keys=False))
        return target

    # ---- request log -----------------------------------------------------------------------------------

    def record(self, method: str, path: str, query: dict[str, str], status: int, started: float) -> None:
        with self._requests_lock:
            self._requests.append(RecordedRequest(method, path, dict(query), status, started))

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of the request log, oldest first."""
        with self._requests_lock:
            return list(self._requests)

    def count(self, method: str | None = None, path_prefix: str | None = None) -> int:
        """How many logged requests match ``method`` (e.g. ``"PUT"``) and start with ``path_prefix``."""
        return sum(
            1
            for r in self.requests
            if (method is None or r.method == method)
            and (path_prefix is None or r.path.startswith(path_prefix))
        )

    def clear_requests(self) -> None:
        with self._requests_lock:
            self._requests.clear()

    # ---- direct store access (no HTTP, no validation; watch events are emitted) -------------------------

    def put_object(self, obj: Mapping[str, Any]) -> JSON:
        """Create or replace ``obj`` (``kind`` selects the resource) as stored, ``status`` included.

        Namespaced objects default to namespace ``default``. Quantities are canonicalised and system metadata
        (uid, creationTimestamp, resourceVersion, generation) is filled in; nothing is validated.
        """
        res = lookup(str(obj.get("kind", "")))
        body = copy.deepcopy(dict(obj))
        strategy = self.registry.strategy(res)
        strategy.decode(body)
        strategy.finalize(body)
        body["apiVersion"], body["kind"] = res.api_version, res.kind
        meta: JSON = body.setdefault("metadata", {})
        namespace = meta.setdefault("namespace", "default") if res.namespaced else ""
        meta.pop("resourceVersion", None)

        def replace(current: JSON) -> JSON:
            for key in ("uid", "creationTimestamp", "generation"):
                if key in current["metadata"]:
                    meta[key] = current["metadata"][key]
            if strategy.tracks_generation and strategy.spec_changed(body, current):
                meta["generation"] = current["metadata"].get("generation", 0) + 1
            return body

        if self.store.find(res, namespace, meta["name"]) is not None:
            return self.store.update(res, namespace, meta["name"], replace)
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", now_rfc3339())
        if strategy.tracks_generation:
            meta.setdefault("generation", 1)
        return self.store.create(res, body)

    def get_object(self, kind: str, name: str, namespace: str | None = None) -> JSON | None:
        """The stored object, or None. ``kind``: ``ResourceSlice``, ``resourceslices``, ``Node``, ..."""
        res = lookup(kind)
        return self.store.find(res, (namespace or "default") if res.namespaced else "", name)

    def list_objects(self, kind: str, namespace: str | None = None) -> list[JSON]:
        """Stored objects of a kind (all namespaces when ``namespace`` is None), sorted by namespace/name."""
        items, _ = self.store.list(lookup(kind), namespace)
        return items

    def delete_object(self, kind: str, name: str, namespace: str | None = None) -> bool:
        """Delete a stored object; False when it did not exist."""
        res = lookup(kind)
        ns = (namespace or "default") if res.namespaced else ""
        try:
            self.store.delete(res, ns, name)
        except ApiError as err:
            if err.code == 404:
                return False
            raise
        return True

    def wait_for(self, predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.01) -> bool:
        """Poll ``predicate()`` until it is true or ``timeout`` seconds pass (test helper)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(interval)
        return bool(predicate())
