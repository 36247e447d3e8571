"""The verbs (create, get, list, update, delete) over the store, with the apiserver's metadata handling."""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import uuid
from dataclasses import dataclass
from typing import Any, Final

from gpudra.devtools.fakeapi import status
from gpudra.devtools.fakeapi.gates import FeatureGates
from gpudra.devtools.fakeapi.resources import Resource
from gpudra.devtools.fakeapi.selectors import Selector
from gpudra.devtools.fakeapi.status import ApiError, bad_request, conflict, invalid
from gpudra.devtools.fakeapi.store import Store
from gpudra.devtools.fakeapi.strategy import Strategy, now_rfc3339, strategy_for

__all__ = ["ListPage", "Registry"]

JSON = dict[str, Any]
_NAME_ALPHABET: Final = "bcdfghjklmnpqrstvwxz2456789"  # the apiserver's: no vowels, no look-alikes
_GENERATED_SUFFIX: Final = 5
_MAX_NAME: Final = 63
_GENERATE_ATTEMPTS: Final = 8
_SYSTEM_FIELDS: Final = ("uid", "creationTimestamp")


@dataclass(frozen=True)
class ListPage:
    items: list[JSON]
    resource_version: int
    continue_token: str = ""
    remaining: int = 0


def generate_name(base: str) -> str:
    """``metadata.generateName`` + 5 random characters (the base is cut to keep the name <= 63)."""
    base = base[: _MAX_NAME - _GENERATED_SUFFIX]
    return base + "".join(secrets.choice(_NAME_ALPHABET) for _ in range(_GENERATED_SUFFIX))


class Registry:
    def __init__(self, store: Store, feature_gates: FeatureGates) -> None:
        self.store = store
        self.gates = feature_gates
        self._strategies: dict[Resource, Strategy] = {}

    def strategy(self, res: Resource) -> Strategy:
        if res not in self._strategies:
            self._strategies[res] = strategy_for(res, self.gates)
        return self._strategies[res]

    # ---- create ----------------------------------------------------------------------------------------

    def create(self, res: Resource, namespace: str, body: JSON) -> JSON:
        strategy = self.strategy(res)
        strategy.decode(body)
        meta = self._common_meta(res, namespace, body)
        if meta.get("resourceVersion"):
            raise status.unknown_error("resourceVersion should not be set on objects to be created")
        for key in ("deletionTimestamp", "deletionGracePeriodSeconds", "generation"):
            meta.pop(key, None)
        strategy.prepare_create(body)
        generated = not meta.get("name") and bool(meta.get("generateName"))
        attempts = _GENERATE_ATTEMPTS if generated else 1  # a generated name may collide: draw again
        for attempt in range(1, attempts + 1):
            if generated:
                meta["name"] = generate_name(meta["generateName"])
            meta["uid"], meta["creationTimestamp"] = str(uuid.uuid4()), now_rfc3339()
            errors = strategy.validate(body, None)
            if errors:
                raise invalid(res.group, res.kind, meta.get("name", ""), errors)
            strategy.finalize(body)
            try:
                return self.store.create(res, body)
            except ApiError as err:
                if err.status["reason"] != "AlreadyExists" or attempt == attempts:
                    raise
        raise AssertionError("unreachable")

    def _common_meta(self, res: Resource, namespace: str, body: JSON) -> JSON:
        kind = body.get("kind")
        if kind not in (None, "", res.kind):
            raise bad_request(f"the kind in the data ({kind}) does not match the expected kind ({res.kind})")
        body["apiVersion"], body["kind"] = res.api_version, res.kind
        meta: JSON = body.setdefault("metadata", {})
        if res.namespaced:
            if meta.get("namespace", namespace) != namespace:
                raise bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        return meta

    # ---- update ----------------------------------------------------------------------------------------

    def update(self, res: Resource, namespace: str, name: str, body: JSON, subresource: str = "") -> JSON:
        strategy = self.strategy(res)
        strategy.decode(body)
        meta = self._common_meta(res, namespace, body)
        if meta.get("name", "") != name:
            raise bad_request(
                f"the name of the object ({meta.get('name', '')}) does not match the name on the URL ({name})"
            )

        def mutate(current: JSON) -> JSON:
            self._check_preconditions(res, name, body, current)
            if subresource == "status":
                return strategy.status_update(body, current)
            for key in (*_SYSTEM_FIELDS, "generation"):
                if key in current["metadata"]:
                    meta[key] = current["metadata"][key]
            strategy.prepare_update(body, current)
            errors = strategy.validate(body, current)
            if errors:
                raise invalid(res.group, res.kind, name, errors)
            strategy.finalize(body)
            return body

        return self.store.update(res, namespace, name, mutate)

    @staticmethod
    def _check_preconditions(res: Resource, name: str, body: JSON, current: JSON) -> None:
        meta, stored = body["metadata"], current["metadata"]
        uid = meta.get("uid")
        if uid and uid != stored.get("uid"):
            why = f"Precondition failed: UID in precondition: {uid}, UID in object meta: {stored.get('uid')}"
            raise conflict(res.group, res.plural, name, why)
        version = meta.get("resourceVersion")
        if version and version != stored.get("resourceVersion"):
            raise conflict(res.group, res.plural, name)

    # ---- delete ----------------------------------------------------------------------------------------

    def delete(self, res: Resource, namespace: str, name: str, options: JSON | None = None) -> JSON:
        preconditions: JSON = (options or {}).get("preconditions") or {}

        def check(current: JSON) -> None:
            stored = current["metadata"]
            key = f"/registry/{res.plural}/{namespace + '/' if namespace else ''}{name}"
            for field, label in (("uid", "UID"), ("resourceVersion", "ResourceVersion")):
                wanted = preconditions.get(field)
                if wanted is not None and wanted != stored.get(field):
                    why = (
                        f"StorageError: invalid object, Code: 4, Key: {key}, ResourceVersion: 0, "
                        f"AdditionalErrorMsg: Precondition failed: {label} in precondition: {wanted}, "
                        f"{label} in object meta: {stored.get(field)}"
                    )
                    raise conflict(res.group, res.plural, name, why)

        return self.store.delete(res, namespace, name, check)

    def delete_collection(self, res: Resource, namespace: str | None, selector: Selector) -> list[JSON]:
        items, _ = self.store.list(res, namespace)
        deleted = []
        for item in items:
            if selector.matches(item):
                meta = item["metadata"]
                try:
                    deleted.append(self.store.delete(res, meta.get("namespace", ""), meta["name"]))
                except ApiError as err:
                    if err.code != 404:
                        raise
        return deleted

    # ---- reads -----------------------------------------------------------------------------------------

    def get(self, res: Resource, namespace: str, name: str) -> JSON:
        return self.store.get(res, namespace, name)

    def list(
        self, res: Resource, namespace: str | None, selector: Selector, limit: int = 0, token: str = ""
    ) -> ListPage:
        items, version = self.store.list(res, namespace, copies=False)  # read-only: serialised as is
        items = [item for item in items if selector.matches(item)]
        if token:
            start = _decode_token(token)
            items = [i for i in items if _sort_key(i) > start]
        if limit <= 0 or len(items) <= limit:
            return ListPage(items, version)
        page, rest = items[:limit], items[limit:]
        return ListPage(page, version, _encode_token(_sort_key(page[-1]), version), len(rest))


def _sort_key(obj: JSON) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


def _encode_token(start: str, version: int) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": version, "start": start}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_token(token: str) -> str:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        return str(data["start"])
    except (ValueError, KeyError, TypeError, binascii.Error) as err:
        raise status.bad_request(f"continue key is not valid: {err}") from err
