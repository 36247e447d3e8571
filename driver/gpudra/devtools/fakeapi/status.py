"""``Status`` answers and field errors shaped like the kube-apiserver's (``k8s.io/apimachinery`` errors)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final, Literal, NotRequired, TypedDict

__all__ = [
    "ApiError",
    "FieldError",
    "StatusBody",
    "already_exists",
    "bad_request",
    "conflict",
    "expired",
    "go_quote",
    "internal_error",
    "invalid",
    "method_not_allowed",
    "not_found",
    "path_not_found",
    "unknown_error",
]


class StatusCause(TypedDict, total=False):
    reason: str
    message: str
    field: str


class StatusDetails(TypedDict, total=False):
    name: str
    group: str
    kind: str
    causes: list[StatusCause]


class StatusBody(TypedDict):
    kind: Literal["Status"]
    apiVersion: Literal["v1"]
    metadata: dict[str, str]
    status: Literal["Success", "Failure"]
    message: str
    reason: str
    details: NotRequired[StatusDetails]
    code: int


class ApiError(Exception):
    """Raised inside the server; the HTTP layer answers with ``status``."""

    def __init__(self, status: StatusBody) -> None:
        super().__init__(status["message"])
        self.status = status

    @property
    def code(self) -> int:
        return self.status["code"]


ErrorType = Literal[
    "FieldValueRequired",
    "FieldValueInvalid",
    "FieldValueTooLong",
    "FieldValueTooMany",
    "FieldValueDuplicate",
    "FieldValueNotSupported",
    "FieldValueForbidden",
    "FieldValueNotFound",
]

_TYPE_TEXT: Final[dict[str, str]] = {
    "FieldValueRequired": "Required value",
    "FieldValueInvalid": "Invalid value",
    "FieldValueTooLong": "Too long",
    "FieldValueTooMany": "Too many",
    "FieldValueDuplicate": "Duplicate value",
    "FieldValueNotSupported": "Unsupported value",
    "FieldValueForbidden": "Forbidden",
    "FieldValueNotFound": "Not found",
}
_NO_VALUE: Final = frozenset({"FieldValueRequired", "FieldValueForbidden", "FieldValueTooLong"})


@dataclass(frozen=True)
class FieldError:
    """One field error; ``value`` is the bad value as JSON data (rendered like Go's ``field.Error``)."""

    type: ErrorType
    field: str
    detail: str = ""
    value: object = None

    def body(self) -> str:
        """The message without the field path (``field.Error.ErrorBody``)."""
        text = _TYPE_TEXT[self.type]
        if self.type not in _NO_VALUE:
            text = f"{text}: {_render(self.value)}"
        return f"{text}: {self.detail}" if self.detail else text

    def __str__(self) -> str:
        return f"{self.field}: {self.body()}"


def _render(value: object) -> str:
    if isinstance(value, str):
        return go_quote(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


_ESCAPES: Final = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


def go_quote(text: str) -> str:
    """Quote like Go's ``%q`` (``strconv.Quote``) for the characters API values use."""
    out = ['"']
    for char in text:
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif char.isprintable():
            out.append(char)
        elif ord(char) < 0x80:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) <= 0xFFFF:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    out.append('"')
    return "".join(out)


def aggregate(errors: list[FieldError]) -> str:
    """Join field errors like ``utilerrors.Aggregate``: one as is, several as ``[a, b]``, duplicates once."""
    seen: list[str] = []
    for error in errors:
        text = str(error)
        if text not in seen:
            seen.append(text)
    return seen[0] if len(seen) == 1 else "[" + ", ".join(seen) + "]"


def _failure(code: int, reason: str, message: str, details: StatusDetails | None = None) -> StatusBody:
    # Same key order as the apiserver's JSON (details, when present, come before code).
    if details is None:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        }
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details,
        "code": code,
    }


def _resource_details(group: str, plural: str, name: str) -> StatusDetails:
    details: StatusDetails = {"name": name}
    if group:
        details["group"] = group
    details["kind"] = plural
    return details


def qualified(group: str, plural_or_kind: str) -> str:
    """``schema.GroupResource.String()``: ``resourceslices.resource.k8s.io`` or ``nodes``."""
    return f"{plural_or_kind}.{group}" if group else plural_or_kind


def not_found(group: str, plural: str, name: str) -> ApiError:
    message = f"{qualified(group, plural)} {go_quote(name)} not found"
    return ApiError(_failure(404, "NotFound", message, _resource_details(group, plural, name)))


def already_exists(group: str, plural: str, name: str) -> ApiError:
    message = f"{qualified(group, plural)} {go_quote(name)} already exists"
    return ApiError(_failure(409, "AlreadyExists", message, _resource_details(group, plural, name)))


MODIFIED: Final = (
    "the object has been modified; please apply your changes to the latest version and try again"
)


def conflict(group: str, plural: str, name: str, why: str = MODIFIED) -> ApiError:
    message = f"Operation cannot be fulfilled on {qualified(group, plural)} {go_quote(name)}: {why}"
    return ApiError(_failure(409, "Conflict", message, _resource_details(group, plural, name)))


def invalid(group: str, kind: str, name: str, errors: list[FieldError]) -> ApiError:
    causes: list[StatusCause] = [{"reason": e.type, "message": e.body(), "field": e.field} for e in errors]
    details: StatusDetails = {"name": name}
    if group:
        details["group"] = group
    details["kind"] = kind
    details["causes"] = causes
    message = f"{qualified(group, kind)} {go_quote(name)} is invalid"
    if errors:
        message = f"{message}: {aggregate(errors)}"
    return ApiError(_failure(422, "Invalid", message, details))


def bad_request(message: str) -> ApiError:
    return ApiError(_failure(400, "BadRequest", message))


def expired(message: str) -> StatusBody:
    return _failure(410, "Expired", message)


def internal_error(message: str) -> ApiError:
    details: StatusDetails = {"causes": [{"message": message}]}
    return ApiError(_failure(500, "InternalError", f"Internal error occurred: {message}", details))


def unknown_error(message: str, code: int = 500) -> ApiError:
    """An error the apiserver did not classify (``StatusReasonUnknown``: empty reason)."""
    return ApiError(_failure(code, "", message))


def method_not_allowed(group: str, plural: str, action: str) -> ApiError:
    details: StatusDetails = {"group": group, "kind": plural} if group else {"kind": plural}
    message = f"{action} is not supported on resources of kind {go_quote(qualified(group, plural))}"
    return ApiError(_failure(405, "MethodNotAllowed", message, details))


def path_not_found() -> ApiError:
    return ApiError(_failure(404, "NotFound", "the server could not find the requested resource", {}))
