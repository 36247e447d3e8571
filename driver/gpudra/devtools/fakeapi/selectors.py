"""``fieldSelector`` and ``labelSelector`` query parameters: parsing and matching."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final, Literal

from gpudra.devtools.fakeapi.resources import Resource, field_values
from gpudra.devtools.fakeapi.status import ApiError, bad_request

__all__ = ["Selector", "parse_selectors"]

Op = Literal["=", "!=", "exists", "!exists", "in", "notin"]

_FIELD_TERM: Final = re.compile(r"(?P<key>[^=!]+?)\s*(?P<op>==|!=|=)\s*(?P<value>.*)", re.DOTALL)
_LABEL_SET: Final = re.compile(r"(?P<key>\S+)\s+(?P<op>in|notin)\s+\((?P<values>[^)]*)\)")
_LABEL_EQ: Final = re.compile(r"(?P<key>[^=!\s]+)\s*(?P<op>==|!=|=)\s*(?P<value>\S*)")
_LABEL_KEY: Final = re.compile(r"(?P<neg>!?)\s*(?P<key>[^=!\s(),]+)")


@dataclass(frozen=True)
class Requirement:
    key: str
    op: Op
    values: tuple[str, ...] = ()

    def matches(self, present: bool, value: str) -> bool:
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op == "=":
            return present and value == self.values[0]
        if self.op == "in":
            return present and value in self.values
        if self.op == "notin":
            return not present or value not in self.values
        return not present or value != self.values[0]


@dataclass(frozen=True)
class Selector:
    """Field and label requirements; an object matches when it meets all of them."""

    resource: Resource
    fields: tuple[Requirement, ...] = ()
    labels: tuple[Requirement, ...] = ()

    def matches(self, obj: dict[str, Any]) -> bool:
        if self.fields:
            values = field_values(self.resource, obj)
            if not all(req.matches(True, values[req.key]) for req in self.fields):
                return False
        labels: dict[str, str] = (obj.get("metadata") or {}).get("labels") or {}
        return all(req.matches(req.key in labels, labels.get(req.key, "")) for req in self.labels)

    @property
    def empty(self) -> bool:
        return not (self.fields or self.labels)


def parse_selectors(res: Resource, field_selector: str, label_selector: str) -> Selector:
    return Selector(res, _parse_fields(res, field_selector), _parse_labels(label_selector))


def _split_terms(text: str) -> list[str]:
    """Split on commas that are not escaped (fields) and not inside parentheses (label sets)."""
    terms: list[str] = []
    current: list[str] = []
    depth, escaped = 0, False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
            continue
        if char == "\\":
            current.append(char)
            escaped = True
            continue
        depth += (char == "(") - (char == ")")
        if char == "," and depth == 0:
            terms.append("".join(current))
            current = []
        else:
            current.append(char)
    terms.append("".join(current))
    return [term.strip() for term in terms if term.strip()]


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _parse_fields(res: Resource, text: str) -> tuple[Requirement, ...]:
    requirements = []
    for term in _split_terms(text):
        match = _FIELD_TERM.fullmatch(term)
        if match is None:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{term}'")
        key = match["key"].strip()
        if key not in res.field_labels:
            raise bad_request(f"field label not supported for {res.gvk()}: {key}")
        op: Op = "!=" if match["op"] == "!=" else "="
        requirements.append(Requirement(key, op, (_unescape(match["value"]),)))
    return tuple(requirements)


def _parse_labels(text: str) -> tuple[Requirement, ...]:
    return tuple(_parse_label_term(term, text) for term in _split_terms(text))


def _parse_label_term(term: str, text: str) -> Requirement:
    if match := _LABEL_SET.fullmatch(term):
        values = tuple(v.strip() for v in match["values"].split(",") if v.strip())
        return Requirement(match["key"], "in" if match["op"] == "in" else "notin", values)
    if match := _LABEL_EQ.fullmatch(term):
        return Requirement(match["key"], "!=" if match["op"] == "!=" else "=", (match["value"],))
    if match := _LABEL_KEY.fullmatch(term):
        return Requirement(match["key"], "!exists" if match["neg"] else "exists")
    raise _label_error(text)


def _label_error(text: str) -> ApiError:
    return bad_request(f"unable to parse requirement: found '{text}', expected: identifier")
