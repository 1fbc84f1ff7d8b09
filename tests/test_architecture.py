"""The shape of the code: where Ray may appear, no import cycles, one table of render kinds."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from genlib.cli import build_parser
from genlib.render.config import RenderConfig
from genlib.render.kinds import KINDS

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "genlib"
DISTRIBUTED = "genlib.distributed"
DRIVERS = {"genlib.cli", "genlib.pipeline"}  # call into genlib.distributed, never Ray itself
FORBIDDEN = ("ray", "torch.distributed", "torch.nn.parallel")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path) -> list[tuple[str, ast.AST, bool]]:
    """(imported module, node, at module top) for every import statement in the file."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # "from genlib.render import io" imports the module genlib.render.io
            subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES]
            found += [(m, node, id(node) in top) for m in subs or [node.module]]
    return found


def internal_graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        targets = set()
        for module, _, _ in imports(path):
            while module and module not in MODULES:  # "genlib.x.y.Class" -> "genlib.x.y"
                module = module.rpartition(".")[0]
            if module and module != name:
                targets.add(module)
        graph[name] = targets
    return graph


def test_modules_found():
    assert {"genlib.cli", "genlib.train.checkpoint", "genlib.render.kinds", "genlib.distributed.train"} <= set(MODULES)


@pytest.mark.parametrize("name", sorted(n for n in MODULES if not n.startswith(DISTRIBUTED)))
def test_only_the_distributed_package_touches_ray(name):
    """Every package but genlib.distributed is Ray- and torch.distributed-free; the two driver
    modules (CLI, pipeline) reach Ray only through genlib.distributed."""
    for module, _, _ in imports(MODULES[name]):
        assert not any(module == f or module.startswith(f + ".") for f in FORBIDDEN), f"{name} imports {module}"
        if name not in DRIVERS:
            assert not module.startswith(DISTRIBUTED), f"{name} imports {module}"


def test_no_import_cycles():
    graph = internal_graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_internal_imports_are_at_the_top_or_say_why():
    source_lines = {}
    for name, path in MODULES.items():
        lines = path.read_text().splitlines()
        source_lines[name] = lines
        for module, node, at_top in imports(path):
            if at_top or not module.startswith("genlib"):
                continue
            line = lines[node.lineno - 1]
            assert "#" in line, f"{name}:{node.lineno}: function-local import of {module} without a reason"


def test_every_kind_has_its_config_section_and_cli_choice():
    sections = {f.name for f in dataclasses.fields(RenderConfig)}
    for kind in KINDS.values():
        assert kind.section in sections, f"kind {kind.name}: RenderConfig has no section {kind.section!r}"
        assert dataclasses.is_dataclass(kind.params) and callable(getattr(kind.renderer, "from_settings", None))
    render = build_parser()._subparsers._group_actions[0].choices["render"]
    choices = next(a.choices for a in render._actions if a.dest == "kind")
    assert list(choices) == list(KINDS)
    assert "complete" in KINDS  # a wire name stored in manifests: never renamed
