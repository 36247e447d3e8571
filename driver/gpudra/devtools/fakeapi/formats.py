"""Name formats the apiserver checks, returning its messages (``k8s.io/apimachinery`` validation)."""

from __future__ import annotations

import re
from typing import Final

from gpudra.devtools.fakeapi.status import FieldError

_LABEL_FMT: Final = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN_FMT: Final = _LABEL_FMT + "(\\." + _LABEL_FMT + ")*"
_LABEL_RE: Final = re.compile(_LABEL_FMT)
_SUBDOMAIN_RE: Final = re.compile(_SUBDOMAIN_FMT)
_C_ID_FMT: Final = "[A-Za-z_][A-Za-z0-9_]*"
_C_ID_RE: Final = re.compile(_C_ID_FMT)
_KEY_FMT: Final = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_KEY_RE: Final = re.compile(_KEY_FMT)
_VALUE_FMT: Final = f"({_KEY_FMT})?"
_VALUE_RE: Final = re.compile(_VALUE_FMT)

LABEL_MAX: Final = 63
SUBDOMAIN_MAX: Final = 253

_LABEL_MSG: Final = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
    "and must start and end with an alphanumeric character"
)
_SUBDOMAIN_MSG: Final = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character"
)
_C_ID_MSG: Final = (
    "a valid C identifier must start with alphabetic character or '_', "
    "followed by a string of alphanumeric characters or '_'"
)
_KEY_MSG: Final = (
    "must consist of alphanumeric characters, '-', '_' or '.', "
    "and must start and end with an alphanumeric character"
)
_VALUE_MSG: Final = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
    "and must start and end with an alphanumeric character"
)


def regex_error(message: str, regex: str, *examples: str) -> str:
    """``RegexError``: the message, examples and the regular expression, formatted like the apiserver."""
    if not examples:
        return f"{message} (regex used for validation is '{regex}')"
    shown = " or ".join(f"'{example}', " for example in examples)
    return f"{message} (e.g. {shown}regex used for validation is '{regex}')"


def _size(text: str) -> int:
    return len(text.encode())


def dns_label(value: str) -> list[str]:
    errors = [f"must be no more than {LABEL_MAX} characters"] if _size(value) > LABEL_MAX else []
    if not _LABEL_RE.fullmatch(value):
        if _SUBDOMAIN_RE.fullmatch(value):
            errors.append("must not contain dots")
        else:
            errors.append(regex_error(_LABEL_MSG, _LABEL_FMT, "my-name", "123-abc"))
    return errors


def dns_subdomain(value: str) -> list[str]:
    errors = [f"must be no more than {SUBDOMAIN_MAX} characters"] if _size(value) > SUBDOMAIN_MAX else []
    if not _SUBDOMAIN_RE.fullmatch(value):
        errors.append(regex_error(_SUBDOMAIN_MSG, _SUBDOMAIN_FMT, "example.com"))
    return errors


def c_identifier(value: str) -> list[str]:
    if _C_ID_RE.fullmatch(value):
        return []
    return [regex_error(_C_ID_MSG, _C_ID_FMT, "my_name", "MY_NAME", "MyName")]


def label_key(value: str) -> list[str]:
    """``IsQualifiedName`` / ``IsLabelKey``."""
    parts = value.split("/")
    errors: list[str] = []
    if len(parts) > 2:
        shown = regex_error(_KEY_MSG, _KEY_FMT, "MyName", "my.name", "123-abc")
        suffix = "with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        return [f"a valid label key {shown} {suffix}"]
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            errors.append("prefix part must be non-empty")
        else:
            errors.extend(f"prefix part {msg}" for msg in dns_subdomain(prefix))
    name = parts[-1]
    if not name:
        errors.append("name part must be non-empty")
    elif _size(name) > LABEL_MAX:
        errors.append(f"name part must be no more than {LABEL_MAX} bytes")
    if not _KEY_RE.fullmatch(name):
        errors.append("name part " + regex_error(_KEY_MSG, _KEY_FMT, "MyName", "my.name", "123-abc"))
    return errors


def label_value(value: str) -> list[str]:
    errors = [f"must be no more than {LABEL_MAX} bytes"] if _size(value) > LABEL_MAX else []
    if not _VALUE_RE.fullmatch(value):
        errors.append(regex_error(_VALUE_MSG, _VALUE_FMT, "MyValue", "my_value", "12345"))
    return errors


def invalid_each(path: str, value: str, messages: list[str]) -> list[FieldError]:
    """One ``Invalid value`` error per message, all for ``value`` at ``path``."""
    return [FieldError("FieldValueInvalid", path, msg, value) for msg in messages]


def too_long(path: str, limit: int) -> FieldError:
    unit = "byte" if limit == 1 else "bytes"
    return FieldError("FieldValueTooLong", path, f"may not be more than {limit} {unit}")


def too_many(path: str, count: int, limit: int) -> FieldError:
    unit = "item" if limit == 1 else "items"
    return FieldError("FieldValueTooMany", path, f"must have at most {limit} {unit}", count)


def required(path: str, detail: str = "") -> FieldError:
    return FieldError("FieldValueRequired", path, detail)


def object_name(name: str, generate_name: str) -> list[FieldError]:
    """``metadata.name`` of an object whose name must be a DNS subdomain (create and update)."""
    if not name:
        if generate_name:
            return []
        return [required("metadata.name", "name or generateName is required")]
    return invalid_each("metadata.name", name, dns_subdomain(name))


def driver_name(value: str, path: str) -> list[FieldError]:
    """Driver names (and attribute domains) are validated like CSI driver names."""
    errors = [required(path)] if not value else []
    if _size(value) > LABEL_MAX:
        errors.append(too_long(path, LABEL_MAX))
    return errors + invalid_each(path, value, dns_subdomain(value.lower()))
