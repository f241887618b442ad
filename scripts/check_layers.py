#!/usr/bin/env python3
"""The import-layer check: no module of src/ imports one that stands above it.

Each top-level module of src/ sits on one floor of LAYERS (ground floor first). A file may name
`crate::X` only where X is its own module or sits on a lower floor. Every `crate::` path in code
counts (`use` lines and paths written inline), tests included; comments do not.

    python3 scripts/check_layers.py        # exit 1 and list the upward imports, if any
"""
import pathlib
import re
import sys

# Ground floor first. A module may import only the floors below its own (and itself).
LAYERS = [
    ["error", "metrics", "batching"],  # vocabulary with no samp imports
    ["kernels"],  # GEMM, attention, activations: per-ISA kernels behind one table
    ["quant"],  # plan, observer, artifact: the words the model and the search share
    ["tokenize"],  # text -> token ids
    ["model"],  # weights, encoder, heads
    ["backend"],  # compute threads, batches, devices
    ["tune"],  # samp quantize: search, eval, report
    ["config"],  # the serve config file
    ["server"],  # gRPC, HTTP, admission
    ["client"],  # gRPC client, load generator
    ["cli", "lib", "main"],  # the binary's commands
]

FLOOR = {m: i for i, floor in enumerate(LAYERS) for m in floor}
PATH = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
COMMENT = re.compile(r"^\s*//")


def module_of(src: pathlib.Path, file: pathlib.Path) -> str:
    rel = file.relative_to(src)
    return rel.parts[0].removesuffix(".rs")


def main() -> int:
    src = pathlib.Path(__file__).resolve().parent.parent / "src"
    bad, unknown = [], set()
    for file in sorted(src.rglob("*.rs")):
        me = module_of(src, file)
        if me not in FLOOR:
            unknown.add(me)
            continue
        for n, line in enumerate(file.read_text().splitlines(), 1):
            if COMMENT.match(line):
                continue
            code = line.split("//", 1)[0]
            for other in PATH.findall(code):
                if other == me:
                    continue
                if other not in FLOOR:
                    unknown.add(other)
                elif FLOOR[other] >= FLOOR[me]:
                    bad.append(f"{file.relative_to(src.parent)}:{n}: {me} -> {other}")
    for m in sorted(unknown):
        print(f"module {m!r} has no floor in scripts/check_layers.py LAYERS")
    for b in bad:
        print(b)
    if bad or unknown:
        print(f"{len(bad)} upward import(s); floors, ground first: "
              + " < ".join("/".join(f) for f in LAYERS))
        return 1
    print(f"import layers: ok ({sum(1 for _ in src.rglob('*.rs'))} files, no upward imports)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
