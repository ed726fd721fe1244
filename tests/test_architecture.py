"""The package's layering, read from the source: every import (at the top of a file or inside a
function) points down the pipeline, no two files import each other through any chain, and no
module grows past what one reader holds in mind."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "apm_lightning"
# Bottom to top (docs/architecture.md): a file may import its own layer and the ones below.
LAYERS = [
    {"core"},
    {"data"},
    {"metrics"},
    {"models"},
    {"modules"},
    {"training"},
    {"reports"},
    {"runners"},
    {"cli", "demo", "export", "__main__", "__init__"},
]
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(name: str) -> str | None:
    """The package module (file) that an imported dotted name lives in."""
    parts = name.split(".")
    while parts:
        path = PACKAGE.parent.joinpath(*parts)
        if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file():
            return ".".join(parts)
        parts.pop()
    return None


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        mod = module_name(path)
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            for name in names:
                if name.split(".")[0] == "apm_lightning":
                    target = resolve(name)
                    if target and target != mod:
                        targets.add(target)
        # "from apm_lightning.core import hub" names the package and the file: the file counts.
        graph[mod] = {t for t in targets if not any(o.startswith(t + ".") for o in targets)}
    return graph


def layer(mod: str) -> int:
    top = mod.split(".")[1] if "." in mod else "__init__"
    return next(i for i, names in enumerate(LAYERS) if top in names)


def test_every_file_is_in_a_layer():
    for mod in import_graph():
        layer(mod)  # StopIteration names a new top-level module with no place in LAYERS


def test_imports_point_down_the_pipeline():
    upward = [
        f"{mod} -> {target}"
        for mod, targets in import_graph().items()
        for target in targets
        if target != "apm_lightning" and layer(target) > layer(mod)
    ]
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    graph = import_graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(mod: str, stack: list[str]) -> None:
        state[mod] = 1
        for target in sorted(graph.get(mod, ())):
            if target.count(".") < 1 or target == "apm_lightning":
                continue
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[mod] = 2

    for mod in sorted(graph):
        if mod not in state:
            visit(mod, [mod])
    # The one allowed loop: a package's __init__ that imports (registers) its own files, reached
    # from inside the package by a function-body import that needs every class registered
    # (modules.hf_export loading a checkpoint of any apm module).
    packages = {module_name(p) for p in PACKAGE.rglob("__init__.py")}
    cycles = [
        c
        for c in cycles
        if not any(m in packages and all(o == m or o.startswith(m + ".") for o in c) for m in c)
    ]
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_module_is_longer_than_one_reader_holds():
    long = {
        module_name(p): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines (split them by concern): {long}"


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: a file that imports a higher layer is reported."""
    fake = tmp_path / "apm_lightning"
    (fake / "core").mkdir(parents=True)
    (fake / "training").mkdir()
    for folder in (fake, fake / "core", fake / "training"):
        (folder / "__init__.py").write_text("")
    (fake / "training" / "cli.py").write_text("X = 1\n")
    (fake / "core" / "bad.py").write_text("def f():\n    from apm_lightning.training.cli import X\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    assert import_graph()["apm_lightning.core.bad"] == {"apm_lightning.training.cli"}
    assert layer("apm_lightning.training.cli") > layer("apm_lightning.core.bad")
