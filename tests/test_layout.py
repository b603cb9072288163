"""The package's layout: the library a MONAI user imports apart from the project's tooling, no import circle, no
private name used across modules, nothing found by walking up from ``__file__``, every package in the wheel."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "lmttm_monai"
TOOLING = ("lmttm_monai.bundle", "lmttm_monai.experiments")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, name: str) -> list[tuple[str, list[str], int]]:
    """``(module, imported names, line)`` of every import of lmttm_monai in ``path``, function-level ones included."""
    found = []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("lmttm_monai")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.startswith("lmttm_monai"):
                found.append((base, [a.name for a in node.names], node.lineno))
    return found


def resolve(target: str, names: list[str], known: dict[str, Path]) -> list[str]:
    """The modules an import loads: ``from pkg import submodule`` names the submodule, anything else the module."""
    subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in known]
    return subs or ([target] if target in known else [])


def test_the_wheel_lists_every_package_under_lmttm_monai_and_the_bundles():
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {module_name(p) for p in PACKAGE.rglob("__init__.py")}
    assert set(config["packages"]) == packages | {"lmttm_monai.bundles"}
    assert config["package-dir"] == {"lmttm_monai.bundles": "bundles"}


def test_the_library_never_imports_the_tooling():
    known = modules()
    wrong = [
        f"{name} imports {target} (line {line})"
        for name, path in known.items()
        if not name.startswith(TOOLING)
        for target, _, line in imports(path, name)
        if target.startswith(TOOLING)
    ]
    assert wrong == []


def test_no_module_imports_a_private_name_of_another():
    known = modules()
    wrong = [
        f"{name} imports {target}.{n} (line {line})"
        for name, path in known.items()
        for target, names, line in imports(path, name)
        for n in names
        if n.startswith("_") and target != name
    ]
    assert wrong == []


def test_no_import_circle_between_modules():
    known = modules()
    graph = {name: set() for name in known}
    for name, path in known.items():
        for target, names, _ in imports(path, name):
            # a package's __init__ importing its own submodules is how it exports them, not a circle
            graph[name] |= {m for m in resolve(target, names, known) if m != name}

    def circle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        seen = set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return trail + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, trail + [nxt]))
        return None

    # an __init__ re-exporting a submodule that imports the package back is the usual Python pattern; circles
    # between two plain modules are what breaks (partially initialized modules)
    plain = {n for n, p in known.items() if p.name != "__init__.py"}
    circles = {" -> ".join(c) for n in plain if (c := circle_from(n)) and all(m in plain for m in c)}
    assert circles == set()


def test_nothing_in_the_package_walks_up_from_its_own_file():
    # the bundles come through lmttm_monai.utils.bundles_dir (package data), never Path(__file__).parents[...]
    walks = ("parents[", ".parent.parent", "dirname(os.path.dirname(")
    offenders = [
        f"{p.relative_to(REPO_ROOT)}:{i}"
        for p in PACKAGE.rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if "__file__" in line and any(w in line for w in walks)
    ]
    assert offenders == []
