"""Built-in profiles as editable JSON, for tests that need a variant of a real profile."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from importlib import resources
from typing import Any

from gpudra.vendors.mock.profile import Profile, parse_profile


def builtin_json(name: str) -> dict[str, Any]:
    """A built-in profile as a plain dict, to edit into a variant."""
    text = (resources.files("gpudra.vendors.mock") / "profiles" / f"{name}.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def variant(name: str, edit: Callable[[dict[str, Any]], None]) -> Profile:
    """A built-in profile with ``edit`` applied to its JSON, validated by the real parser."""
    data = copy.deepcopy(builtin_json(name))
    edit(data)
    return parse_profile(json.dumps(data), origin=f"variant of {name}")
