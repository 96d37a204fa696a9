#!/usr/bin/env python3
"""Fails when a Rust function under the given directories is longer than --max lines.

    fn-length.py [--max 100] DIR...

`make lint` runs it over crates/: a function that does not fit on two screens is split into
named steps (see docs/ARCHITECTURE.md). Counting is textual: from the `fn` line to the line
holding its closing brace, braces inside strings, chars and line comments ignored.
"""
import argparse
import os
import re
import sys

FN = re.compile(r'^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)')
STRING = re.compile(r'"(\\.|[^"\\])*"')
CHAR = re.compile(r"'(\\.|[^'\\])'")


def code(line):
    return CHAR.sub("''", STRING.sub('""', line)).split("//")[0]


def long_functions(path, limit):
    lines = open(path, encoding="utf-8").read().split("\n")
    for i, line in enumerate(lines):
        m = FN.match(line)
        if not m:
            continue
        depth, started, j = 0, False, i
        while j < len(lines):
            text = code(lines[j])
            for c in text:
                if c == "{":
                    depth, started = depth + 1, True
                elif c == "}":
                    depth -= 1
            if (started and depth <= 0) or (not started and text.rstrip().endswith(";")):
                break
            j += 1
        if j - i + 1 > limit:
            yield j - i + 1, i + 1, m.group(6)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max", type=int, default=100)
    ap.add_argument("dirs", nargs="+")
    a = ap.parse_args()
    found = []
    for d in a.dirs:
        for root, dirs, files in os.walk(d):
            dirs[:] = [x for x in dirs if x != "target"]
            for f in sorted(files):
                if f.endswith(".rs"):
                    p = os.path.join(root, f)
                    found += [(n, p, line, name) for n, line, name in long_functions(p, a.max)]
    for n, p, line, name in sorted(found, reverse=True):
        print(f"{p}:{line}: fn {name} is {n} lines (at most {a.max}: split it into named steps)",
              file=sys.stderr)
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
