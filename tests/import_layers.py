#!/usr/bin/env python3
"""Checks that src/ keeps its layers: no import loop between modules, none between the files of a
directory module, and no source file over MAX_LINES lines. Prints what each module imports.

Granularity: for importers outside it, a directory module (src/x/) is one node "x"; inside it,
each file is a node ("x" for mod.rs, "x::y" for y.rs) and their own loops are checked too.
An import is any path `crate::name` (including `crate::{a, b::c}`), `super::name` in a file of a
directory, and `child::` in a mod.rs that declares `mod child`. Root re-exports (`crate::Name`)
are resolved through lib.rs's `pub use`. Comments and `#[cfg(test)] mod tests` are not imports.
lib.rs (the crate root, which re-exports) is not a node. Exits 1 on a loop or an oversized file.
Usage: python3 tests/import_layers.py [src-dir]   (default: src next to this script's parent)
"""

import os
import re
import sys

MAX_LINES = 650


def strip(text):
    """Source without comments and without the trailing unit-test module."""
    cut = re.search(r"#\[cfg\(test\)\]\s*mod tests\b", text)
    if cut:
        text = text[: cut.start()]
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def first_segments(group):
    """`a, b::{c, d}, e::f` -> [a, b, e] (top-level entries of a brace group)."""
    depth, current, out = 0, "", []
    for ch in group:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(current)
            current = ""
        else:
            current += ch
    out.append(current)
    names = []
    for entry in out:
        entry = entry.strip()
        if entry:
            names.append(re.split(r"::|\s", entry)[0])
    return names


def referenced(text, prefix):
    """Names used right after `prefix::` (braces expanded one level)."""
    names = []
    for match in re.finditer(re.escape(prefix) + r"::(\{|[A-Za-z_][A-Za-z0-9_]*)", text):
        if match.group(1) == "{":
            depth, i = 1, match.end()
            while i < len(text) and depth:
                depth += {"{": 1, "}": -1}.get(text[i], 0)
                i += 1
            names.extend(first_segments(text[match.end() : i - 1]))
        else:
            names.append(match.group(1))
    return [n for n in names if n not in ("self", "*")]


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    src = os.path.normpath(src)
    files = {}
    for root, _, names in os.walk(src):
        for name in names:
            if name.endswith(".rs"):
                path = os.path.join(root, name)
                files[os.path.relpath(path, src)] = open(path, encoding="utf-8").read()

    failures = []
    for rel, text in sorted(files.items()):
        lines = text.count("\n")
        if lines > MAX_LINES:
            failures.append(f"{rel}: {lines} lines (more than {MAX_LINES}: split it by job)")

    # Root re-exports: `pub use module::{Name, ...}` in lib.rs.
    reexport = {}
    lib = strip(files.get("lib.rs", ""))
    for match in re.finditer(r"pub use ([a-z_][a-z0-9_]*)::(\{[^}]*\}|[A-Za-z_][A-Za-z0-9_]*)\s*;", lib):
        names = match.group(2).strip("{}").split(",")
        for name in names:
            name = name.strip().split(" as ")[-1].strip()
            if name:
                reexport[name] = match.group(1)
    top_modules = set(re.findall(r"^\s*(?:pub(?:\([a-z]+\))?\s+)?mod ([a-z_][a-z0-9_]*)\s*;", lib, flags=re.M))

    def node(rel):
        parts = rel[:-3].split(os.sep)
        if parts[-1] == "mod":
            parts = parts[:-1]
        return "::".join(parts)

    outer = {}  # top-level module -> set of top-level modules it imports
    inner = {}  # directory -> {file node -> set of sibling file nodes}
    for rel, raw in files.items():
        if rel == "lib.rs":
            continue
        text = strip(raw)
        me = node(rel)
        top = me.split("::")[0]
        in_dir = os.sep in rel
        targets = set()
        for name in referenced(text, "crate"):
            mod = name if name in top_modules else reexport.get(name)
            if mod:
                targets.add(mod)
        siblings = set()
        if in_dir:
            directory = rel.split(os.sep)[0]
            is_mod_rs = rel.endswith(os.sep + "mod.rs")
            if not is_mod_rs:
                for name in referenced(text, "super"):
                    sibling = f"{directory}::{name}"
                    siblings.add(sibling if any(node(r) == sibling for r in files) else directory)
            else:
                children = set(re.findall(r"^\s*(?:pub(?:\([a-z]+\))?\s+)?mod ([a-z_][a-z0-9_]*)\s*;", text, flags=re.M))
                for child in children:
                    if re.search(r"(?<![A-Za-z0-9_:])" + child + r"::", text):
                        siblings.add(f"{directory}::{child}")
            for target in list(targets):
                if target == directory:
                    targets.discard(target)
                    # crate::dir::file from inside the directory is a sibling import.
                    for name in referenced(text, f"crate::{directory}"):
                        sibling = f"{directory}::{name}"
                        siblings.add(sibling if any(node(r) == sibling for r in files) else directory)
            siblings.discard(me)
            inner.setdefault(directory, {}).setdefault(me, set()).update(siblings)
        targets.discard(top)
        outer.setdefault(top, set()).update(targets)

    def cycles(graph):
        found, state, stack = [], {}, []

        def visit(n):
            state[n] = 1
            stack.append(n)
            for m in sorted(graph.get(n, ())):
                if state.get(m) == 1:
                    found.append(stack[stack.index(m) :] + [m])
                elif m not in state:
                    visit(m)
            stack.pop()
            state[n] = 2

        for n in sorted(graph):
            if n not in state:
                visit(n)
        return found

    print("module imports (a directory module is one node):")
    for mod in sorted(outer):
        print(f"  {mod}: {' '.join(sorted(outer[mod])) or '-'}")
    for directory in sorted(inner):
        print(f"inside {directory}/:")
        for mod in sorted(inner[directory]):
            print(f"  {mod}: {' '.join(sorted(inner[directory][mod])) or '-'}")

    for loop in cycles(outer):
        failures.append("import loop: " + " -> ".join(loop))
    for directory, graph in sorted(inner.items()):
        for loop in cycles(graph):
            failures.append(f"import loop inside {directory}/: " + " -> ".join(loop))
    for failure in failures:
        print("FAIL " + failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
