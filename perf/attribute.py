#!/usr/bin/env python3
"""Per-operation instructions by function: the difference between two callgrind
outputs (1 and 1+N iterations of one path) divided by N. Inlined code is counted
in the function it was inlined into, as callgrind_annotate reports it.

usage: attribute.py ONE.out MANY.out N [TOP]
"""
import re
import subprocess
import sys
from collections import defaultdict

LINE = re.compile(r"^\s*([0-9,]+)\s+\([^)]*\)\s+(.*?):(.*?)(?: \[.*\])?$")


def by_function(path):
    out = subprocess.run(
        ["callgrind_annotate", "--inclusive=no", "--threshold=100", "--auto=no", path],
        check=True, capture_output=True, text=True,
    ).stdout
    totals = defaultdict(int)
    in_table = False
    for line in out.splitlines():
        # Only the flat "Ir file:function" table, not the totals or annotated source.
        if line.rstrip().endswith("file:function"):
            in_table = True
            continue
        if not in_table or line.startswith("---"):
            continue
        if not line.strip():
            break
        m = LINE.match(line)
        if not m:
            continue
        totals[m.group(3).strip()] += int(m.group(1).replace(",", ""))
    return totals


def main():
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    one, many = by_function(sys.argv[1]), by_function(sys.argv[2])
    n = int(sys.argv[3])
    top = int(sys.argv[4]) if len(sys.argv) == 5 else 25
    per_op = {f: (many.get(f, 0) - one.get(f, 0)) / n for f in many.keys() | one.keys()}
    total = sum(per_op.values())
    print(f"{'Ir/op':>8} {'share':>6}  function")
    for f, ir in sorted(per_op.items(), key=lambda kv: -kv[1])[:top]:
        if ir < 0.5:
            break
        print(f"{ir:8.0f} {ir * 100 / total:5.1f}%  {f}")
    print(f"{total:8.0f} 100.0%  total")


main()
