"""Per-resource write rules (the apiserver's "strategies"): decoding, defaults, generation, gates, checks."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

from gpudra.devtools.fakeapi import decode, formats, gates, pods, validation
from gpudra.devtools.fakeapi.resources import PODS, RESOURCE_CLAIMS, RESOURCE_SLICES, Resource
from gpudra.devtools.fakeapi.status import FieldError

__all__ = ["Strategy", "now_rfc3339", "strategy_for"]

JSON = dict[str, Any]


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Strategy:
    """Rules shared by every resource: a DNS-subdomain name; optional ``metadata.generation``."""

    def __init__(self, res: Resource, tracks_generation: bool = False) -> None:
        self.res = res
        self.tracks_generation = tracks_generation

    def decode(self, obj: JSON) -> None:
        """Type checks, quantity canonicalisation and defaulting (raises ApiError 400)."""
        decode.normalize(obj, {"metadata": dict}, self.res.kind)

    def prepare_create(self, obj: JSON) -> None:
        if self.tracks_generation:
            obj["metadata"]["generation"] = 1

    def prepare_update(self, new: JSON, old: JSON) -> None:
        generation = old["metadata"].get("generation")
        if generation is None:
            new["metadata"].pop("generation", None)
            return
        changed = self.tracks_generation and self.spec_changed(new, old)
        new["metadata"]["generation"] = generation + 1 if changed else generation

    def validate(self, obj: JSON, old: JSON | None) -> list[FieldError]:
        meta = obj.get("metadata") or {}
        return formats.object_name(meta.get("name", ""), meta.get("generateName", ""))

    def finalize(self, obj: JSON) -> None:
        """Shape the object as the apiserver would store and return it (after validation)."""

    def spec_changed(self, new: JSON, old: JSON) -> bool:
        return new.get("spec") != old.get("spec")

    def status_update(self, new: JSON, old: JSON) -> JSON:
        """The object a ``/status`` write stores: ``old`` with ``new``'s status."""
        result = copy.deepcopy(old)
        result["status"] = copy.deepcopy(new.get("status") or {})
        result["metadata"]["resourceVersion"] = (new.get("metadata") or {}).get("resourceVersion")
        return result


class SliceStrategy(Strategy):
    def __init__(self, feature_gates: gates.FeatureGates) -> None:
        super().__init__(RESOURCE_SLICES, tracks_generation=True)
        self.gates = feature_gates

    def decode(self, obj: JSON) -> None:
        decode.normalize(obj, decode.RESOURCE_SLICE, self.res.kind)
        for device in (obj.get("spec") or {}).get("devices") or []:
            for taint in device.get("taints") or []:
                taint.setdefault("timeAdded", now_rfc3339())

    def prepare_create(self, obj: JSON) -> None:
        super().prepare_create(obj)
        gates.drop_disabled_fields(obj, None, self.gates)

    def prepare_update(self, new: JSON, old: JSON) -> None:
        # Like the apiserver: the generation follows the spec as sent, before gated fields are dropped.
        super().prepare_update(new, old)
        gates.drop_disabled_fields(new, old, self.gates)

    def validate(self, obj: JSON, old: JSON | None) -> list[FieldError]:
        return validation.validate_slice(obj, old)

    def finalize(self, obj: JSON) -> None:
        """Empty lists and maps are omitted; required scalars are always present (Go zero values)."""
        decode.prune_empty(obj, decode.RESOURCE_SLICE)
        spec = obj.setdefault("spec", {})
        spec.setdefault("driver", "")
        pool = spec.setdefault("pool", {})
        for key, zero in (("name", ""), ("generation", 0), ("resourceSliceCount", 0)):
            pool.setdefault(key, zero)
        for device in spec.get("devices") or []:
            device.setdefault("name", "")
            for capacity in (device.get("capacity") or {}).values():
                capacity.setdefault("value", "0")

    def spec_changed(self, new: JSON, old: JSON) -> bool:
        # Semantic comparison: an empty list equals an absent one.
        shaped = copy.deepcopy(new)
        self.finalize(shaped)
        return shaped.get("spec") != old.get("spec")


class ClaimStrategy(Strategy):
    """Claims: ``status`` is written only through ``/status``; the spec is immutable."""

    def __init__(self) -> None:
        super().__init__(RESOURCE_CLAIMS, tracks_generation=True)

    def decode(self, obj: JSON) -> None:
        super().decode(obj)
        devices = (obj.get("spec") or {}).get("devices") or {}
        for request in devices.get("requests") or []:
            for exact in [request.get("exactly"), *(request.get("firstAvailable") or [])]:
                if isinstance(exact, dict):
                    exact.setdefault("allocationMode", "ExactCount")
                    if exact["allocationMode"] == "ExactCount":
                        exact.setdefault("count", 1)

    def prepare_create(self, obj: JSON) -> None:
        super().prepare_create(obj)
        obj["status"] = {}

    def prepare_update(self, new: JSON, old: JSON) -> None:
        super().prepare_update(new, old)
        new["status"] = copy.deepcopy(old.get("status") or {})

    def validate(self, obj: JSON, old: JSON | None) -> list[FieldError]:
        errors = super().validate(obj, old)
        if old is not None and obj.get("spec") != old.get("spec"):
            shown = json.loads(json.dumps(obj.get("spec") or {}))
            errors.append(FieldError("FieldValueInvalid", "spec", "field is immutable", shown))
        return errors


class PodStrategy(Strategy):
    """Pods (:mod:`gpudra.devtools.fakeapi.pods`): ``status`` only through ``/status``; new Pods are
    ``Pending``."""

    def __init__(self) -> None:
        super().__init__(PODS)

    def prepare_create(self, obj: JSON) -> None:
        super().prepare_create(obj)
        pods.default_pod(obj)

    def prepare_update(self, new: JSON, old: JSON) -> None:
        super().prepare_update(new, old)
        new["status"] = copy.deepcopy(old.get("status") or {})

    def validate(self, obj: JSON, old: JSON | None) -> list[FieldError]:
        return pods.validate_pod(obj, old)


def strategy_for(res: Resource, feature_gates: gates.FeatureGates) -> Strategy:
    if res == RESOURCE_SLICES:
        return SliceStrategy(feature_gates)
    if res == RESOURCE_CLAIMS:
        return ClaimStrategy()
    if res == PODS:
        return PodStrategy()
    return Strategy(res, tracks_generation=res.plural == "deviceclasses")
