"""The API's name formats: what they accept is always a safe path component, and they agree with the API."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpudra.planning import claimnames
from gpudra.planning.claimnames import NameFormat

FORMATS = {
    "label": claimnames.DNS_LABEL,
    "subdomain": claimnames.DNS_SUBDOMAIN,
    "request": claimnames.REQUEST_NAME,
    "pool": claimnames.POOL_NAME,
    "share": claimnames.SHARE_ID,
    "uid": claimnames.CLAIM_UID,
}
# Everything that could make a component something else: separators, dots, escapes, controls, case, unicode.
_TRICKY = st.text(alphabet=st.sampled_from("a0-./%\\\x00\n A_é~"), max_size=12)


@pytest.mark.parametrize("fmt", FORMATS.values(), ids=list(FORMATS))
@given(text=_TRICKY | st.text(max_size=12))
def test_what_a_format_accepts_is_made_of_safe_components(fmt: NameFormat, text: str) -> None:
    if fmt.problem(text) is not None:
        return
    for part in text.split("/"):
        assert part not in {"", ".", ".."}
        assert part[0].isascii()
        assert part[0].isalnum()
        assert all(c.isascii() and (c.isalnum() or c in "-.") for c in part)


@pytest.mark.parametrize(
    ("fmt", "good", "bad"),
    [
        ("label", ["a", "gpu-0", "0", "a" * 63], ["", "A", "a.b", "-a", "a-", "a" * 64, "a/b"]),
        ("subdomain", ["a.b", "node-a", "a" * 253], ["", "a..b", ".a", "a" * 254, "a/b", "A"]),
        ("request", ["gpu", "gpu/big", "a-1/b-2"], ["", "..", "a/b/c", "a/", "/a", "a.b", "A/b"]),
        ("pool", ["node-a", "a.b/c-d/e", "x" * 253], ["", "a//b", "/a", "a/", "x" * 254, "a/../b"]),
        (
            "share",
            ["5e0c1a9e-0000-4000-8000-000000000007"],
            ["", "7", "5E0C1A9E-0000-4000-8000-000000000007", "5e0c1a9e000040008000000000000007"],
        ),
        ("uid", ["1111-aaaa", "u", "A1-b2"], ["", "-a", "../x", "a_b", "a" * 129]),
    ],
)
def test_examples(fmt: str, good: list[str], bad: list[str]) -> None:
    for name in good:
        assert FORMATS[fmt].problem(name) is None, name
    for name in bad:
        assert FORMATS[fmt].problem(name) is not None, name


def test_the_problem_quotes_the_value_and_says_what_is_allowed() -> None:
    assert claimnames.DNS_LABEL.problem("../\n") == (
        'invalid value "../\\n": must be a DNS label: at most 63 characters of a-z, 0-9 and \'-\', '
        "starting and ending with a letter or digit"
    )
