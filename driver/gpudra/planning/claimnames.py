"""The formats the API defines for the names a claim carries, checked before the plugin uses them (pure).

These names become file names on the host (claim UID, request), paths inside the container (claim name,
pod claim name, request: see :mod:`gpudra.planning.devicemeta`), CDI device names (claim UID, device) and
checkpoint values (share ID, pool, device). The API server enforces the same rules on what it stores; a
name that breaks one did not come from it, and must not reach a path. Every format here admits only
single path segments made of ``[a-z0-9.-]`` (the UID also ``A-Z``) that start with a letter or digit, so
``.``, ``..``, ``/`` and ``%`` can never appear as a component.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from gpudra.model.cdi import is_claim_uid
from gpudra.planning.apirules import OBJECT_NAME_MAX, is_dns_label, is_dns_subdomain

#: ``resource.PoolNameMaxLength``.
POOL_NAME_MAX: Final = 253
# ``types.UID`` as resource.k8s.io validates it (shareID): a UUID in RFC 4122 normalized form, lowercase.
_NORMALIZED_UID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.ASCII)


def is_request_name(text: str) -> bool:
    """A request (DNS label) or a subrequest of one: ``<request>/<subrequest>``, both DNS labels."""
    parts = text.split("/")
    return len(parts) <= 2 and all(is_dns_label(p) for p in parts)


def is_pool_name(text: str) -> bool:
    """DNS subdomains joined by ``/``, at most 253 characters in all."""
    return len(text) <= POOL_NAME_MAX and all(is_dns_subdomain(p) for p in text.split("/"))


def is_normalized_uid(text: str) -> bool:
    return _NORMALIZED_UID.fullmatch(text) is not None


@dataclass(frozen=True, slots=True)
class NameFormat:
    rule: str  # what a valid name is, completing "must be ..."
    test: Callable[[str], bool]

    def problem(self, value: str) -> str | None:
        """Why ``value`` breaks this format (with the value JSON-quoted, control characters escaped)."""
        return None if self.test(value) else f"invalid value {json.dumps(value)}: must be {self.rule}"


DNS_LABEL: Final = NameFormat(
    "a DNS label: at most 63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit",
    is_dns_label,
)
DNS_SUBDOMAIN: Final = NameFormat(
    f"a DNS subdomain: DNS labels joined by '.', at most {OBJECT_NAME_MAX} characters", is_dns_subdomain
)
REQUEST_NAME: Final = NameFormat(
    "a request name: a DNS label, or two DNS labels joined by '/' for a subrequest", is_request_name
)
POOL_NAME: Final = NameFormat(
    f"a pool name: DNS subdomains joined by '/', at most {POOL_NAME_MAX} characters", is_pool_name
)
SHARE_ID: Final = NameFormat(
    "a UID in RFC 4122 normalized form, xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx in lowercase hexadecimal",
    is_normalized_uid,
)
CLAIM_UID: Final = NameFormat(
    "a Kubernetes UID: letters, digits and '-', starting with a letter or digit, at most 128", is_claim_uid
)
