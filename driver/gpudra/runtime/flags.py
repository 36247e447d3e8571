"""Command-line values and their environment twins, checked by one validator each.

Every option of ``gpudra`` has a flag and an environment twin (``GPUDRA_*``, ``NODE_NAME``, ``KUBECONFIG``)
that a DaemonSet sets from its manifest or the downward API. :func:`resolve` takes the flag's text when the
flag was given, else the twin's (an empty twin counts as unset, as Kubernetes writes ``value: ""``), else the
default, and passes it through the option's :class:`Kind`. So ``GPUDRA_METRICS_PORT=abc`` fails exactly like
``--metrics-port abc``, and the error names both.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

from gpudra.model.cdi import is_claim_uid
from gpudra.runtime.errors import UsageError

T = TypeVar("T")

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})
_DNS_SUBDOMAIN: Final = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")


@dataclass(frozen=True, slots=True)
class Kind(Generic[T]):
    """What an option accepts: ``parse`` raises ValueError saying what is wrong; ``expect`` says what is
    right, for the error's fix."""

    expect: str
    parse: Callable[[str], T]


def _integer(text: str) -> int:
    try:
        return int(text.strip(), 10)
    except ValueError:
        raise ValueError("not a whole number") from None


def port(off: str) -> Kind[int]:
    def parse(text: str) -> int:
        value = _integer(text)
        if not 0 <= value <= 65535:
            raise ValueError("not a TCP port (0-65535)")
        return value

    return Kind(f"a port number from 1 to 65535, or 0 {off}", parse)


def count(low: int, high: int, what: str) -> Kind[int]:
    def parse(text: str) -> int:
        value = _integer(text)
        if not low <= value <= high:
            raise ValueError(f"out of range ({low}-{high})")
        return value

    return Kind(f"{what}, a whole number from {low} to {high}", parse)


def seconds(*, zero_ok: bool, what: str) -> Kind[float]:
    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError("not a number of seconds") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
            raise ValueError("not a finite number of seconds " + ("(0 or more)" if zero_ok else "above 0"))
        return value

    return Kind(what, parse)


def _boolean(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError("not a boolean")


BOOLEAN: Final = Kind("true or false (also 1/0, yes/no, on/off)", _boolean)


def choice(*values: str) -> Kind[str]:
    def parse(text: str) -> str:
        if text not in values:
            raise ValueError("not one of the choices")
        return text

    return Kind("one of " + ", ".join(values), parse)


def _absolute(text: str) -> Path:
    if not text:
        raise ValueError("empty")
    path = Path(text)
    if not path.is_absolute():
        raise ValueError("a relative path (the kubelet and the container runtime resolve paths from /)")
    return path


ABSOLUTE_PATH: Final = Kind("an absolute path", _absolute)


def _absolute_list(text: str) -> tuple[Path, ...]:
    return tuple(_absolute(part) for part in text.split(":") if part)


ABSOLUTE_PATHS: Final = Kind("absolute paths separated by ':'", _absolute_list)


def _file(text: str) -> Path:
    if not text.strip():
        raise ValueError("empty")
    return Path(text)


FILE: Final = Kind("a file's path", _file)


def _text(text: str) -> str:
    if not text.strip():
        raise ValueError("empty")
    return text


TEXT: Final = Kind("a non-empty value", _text)


def _ip_address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip().strip("[]")))
    except ValueError:
        raise ValueError("not an IP address") from None


IP_ADDRESS: Final = Kind("an IP address of this pod or node (0.0.0.0 or :: for all)", _ip_address)


def _node_name(text: str) -> str:
    if len(text) > 253 or not _DNS_SUBDOMAIN.fullmatch(text):
        raise ValueError("not a Node name (a DNS subdomain: lowercase letters, digits, '-' and '.')")
    return text


NODE_NAME: Final = Kind("this node's name, as `kubectl get nodes` shows it", _node_name)


def _uid(text: str) -> str:
    if not is_claim_uid(text):
        raise ValueError("not a Kubernetes UID (letters, digits and '-', like metadata.uid)")
    return text


POD_UID: Final = Kind("the pod's metadata.uid (the DaemonSet sets it from the downward API)", _uid)


@dataclass(frozen=True, slots=True)
class Opt:
    """One option: ``flag`` on the command line, ``env`` its twin, ``default`` the text used when neither is
    set (None: no value). ``action`` is argparse's for flags that take no value ("count", "bool")."""

    flag: str
    env: str
    kind: Kind[Any]
    default: str | None
    help: str
    action: str | None = None
    short: str | None = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


def resolve(opt: Opt, given: object, environ: Mapping[str, str]) -> Any:
    """The option's value: ``given`` (what argparse read from the command line; None when the flag was not
    given), else the environment twin, else the default. Raises :class:`UsageError` naming flag and twin."""
    if given is not None and not isinstance(given, str):
        return given  # a counted or boolean flag: argparse's value is the value
    if given is not None:
        raw, source = given, f"{opt.flag} {given!r}"
    elif environ.get(opt.env):
        raw = environ[opt.env]
        source = f"{opt.env}={raw!r} (the environment twin of {opt.flag})"
    elif opt.default is None:
        return None
    else:
        raw, source = opt.default, f"the default of {opt.flag}"
    try:
        return opt.kind.parse(raw)
    except ValueError as e:
        raise UsageError(f"{source}: {e}", f"set {opt.flag} or {opt.env} to {opt.kind.expect}") from None


def _quiet_periods(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in QUIET_KINDS:
            kinds = ", ".join(QUIET_KINDS)
            raise ValueError(f"{part!r} is not <condition>=<seconds> with a condition of {kinds}")
        try:
            seconds_ = float(value)
        except ValueError:
            raise ValueError(f"{part!r}: {value!r} is not a number of seconds") from None
        if not (math.isfinite(seconds_) and 0 < seconds_ <= 7 * 86400):
            raise ValueError(f"{part!r}: seconds must be above 0 and at most a week")
        out[key.strip()] = seconds_
    return out


#: Health conditions that clear after a quiet period (the others clear on evidence).
QUIET_KINDS: Final = ("xid", "ecc", "reset", "thermal")
QUIET_PERIODS: Final = Kind(
    "comma-separated <condition>=<seconds> pairs, e.g. xid=600,ecc=1800", _quiet_periods
)


def _xids(text: str) -> tuple[int, ...]:
    values = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if not part.isdigit() or not 0 < int(part) < 1000:
            raise ValueError(f"{part!r} is not an Xid number (1-999)")
        values.append(int(part))
    return tuple(sorted(set(values)))


XID_LIST: Final = Kind("comma-separated Xid numbers, e.g. 13,31,43 (empty: none ignored)", _xids)
