#!/usr/bin/env python3
"""Fails when modules of one crate use each other in a circle.

A module's edges are the `crate::NAME` paths its code names (comments and
doc comments aside); a cycle among them is printed and the exit status is 1.
"""
import pathlib
import re
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "crates")
failed = False
for src in sorted(root.glob("*/src")):
    mods = {}
    for f in src.rglob("*.rs"):
        rel = f.relative_to(src).with_suffix("")
        name = rel.parts[0] if rel.parts[0] not in ("lib", "main") else None
        if name is None or name == "mod":
            continue
        code = "\n".join(l.split("//")[0] for l in f.read_text().splitlines())
        mods.setdefault(name, set()).update(m for m in re.findall(r"\bcrate::([a-z_][a-z0-9_]*)", code) if m != name)
    graph = {m: {d for d in deps if d in mods} for m, deps in mods.items()}
    state = {}

    def visit(m, path):
        global failed
        state[m] = "open"
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                cycle = path[path.index(d):] + [d]
                print(f"{src.parent.name}: module cycle {' -> '.join(cycle)}", file=sys.stderr)
                failed = True
            elif d not in state:
                visit(d, path + [d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
sys.exit(1 if failed else 0)
