"""Summarise py-spy's raw (collapsed) stacks: where the samples under one entry point go.

    python hack/benchlib/stacks.py STACKS.txt [--root NodePrepareResources] [--top 15]

Each line of the file is ``frame;frame;...;leaf COUNT`` with frames like ``func (path/file.py:123)``.
"Inclusive" is the share of the root's samples in which a function is on the stack; "self" the share in
which it is the innermost frame. Functions are keyed by name and file, not line.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def _key(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if m is None:
        return frame.strip()
    parts = Path(m["file"]).parts
    short = "/".join(parts[parts.index("site-packages") + 1 :] if "site-packages" in parts else parts[-2:])
    return f"{m['func']} ({short})"


def summarise(lines: list[str], root: str) -> tuple[int, Counter[str], Counter[str]]:
    total, inclusive, leaf = 0, Counter[str](), Counter[str]()
    for line in lines:
        stack, _, count_text = line.rstrip().rpartition(" ")
        if not count_text.isdigit():
            continue
        frames = stack.split(";")
        at = next((i for i, f in enumerate(frames) if root in f), None)
        if at is None:
            continue
        count = int(count_text)
        total += count
        for key in {_key(f) for f in frames[at:]}:
            inclusive[key] += count
        leaf[_key(frames[-1])] += count
    return total, inclusive, leaf


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("stacks", type=Path)
    p.add_argument("--root", default="NodePrepareResources", help="count only stacks through this frame")
    p.add_argument("--top", type=int, default=15)
    a = p.parse_args(argv)
    total, inclusive, leaf = summarise(a.stacks.read_text().splitlines(), a.root)
    if not total:
        print(f"no samples under {a.root}", file=sys.stderr)
        return 1
    print(f"{total} samples under {a.root}\n\ninclusive:")
    for key, n in inclusive.most_common(a.top):
        print(f"  {100 * n / total:5.1f}%  {key}")
    print("\nself (innermost frame):")
    for key, n in leaf.most_common(a.top):
        print(f"  {100 * n / total:5.1f}%  {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
