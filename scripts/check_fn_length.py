#!/usr/bin/env python3
"""No function in src/ longer than MAX lines (signature to closing brace, comments included).

    python3 scripts/check_fn_length.py        # exit 1 and list the long ones, if any
"""
import pathlib
import re
import sys

MAX = 120
FN = re.compile(r"^\s*(pub(\([a-z]+\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?(extern\s+\"C\"\s+)?fn\s+(\w+)")
STRING = re.compile(r'"(\\.|[^"\\])*"|\'(\\.|[^\'\\])\'')


def code(line: str) -> str:
    return STRING.sub('""', line).split("//", 1)[0]


def long_functions(file: pathlib.Path):
    lines = file.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FN.match(lines[i])
        if not m:
            i += 1
            continue
        depth, opened, j = 0, False, i
        while j < len(lines):
            c = code(lines[j])
            if not opened and ";" in c and "{" not in c:
                break  # a declaration without a body (trait method)
            depth += c.count("{") - c.count("}")
            opened = opened or "{" in c
            if opened and depth <= 0:
                break
            j += 1
        n = j - i + 1
        if opened and n > MAX:
            yield m.group(7), i + 1, n
        i += 1  # nested fns are checked on their own


def main() -> int:
    src = pathlib.Path(__file__).resolve().parent.parent / "src"
    bad = [
        f"{f.relative_to(src.parent)}:{line}: fn {name} is {n} lines"
        for f in sorted(src.rglob("*.rs"))
        for name, line, n in long_functions(f)
    ]
    print("\n".join(bad) if bad else f"function length: ok (none over {MAX} lines)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
