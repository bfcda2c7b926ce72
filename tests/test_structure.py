"""The package's structure as the design brief states it: no import cycle, one shape for instrumentors,
the settings table as the one source, the viewer free of OpenTelemetry."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from collections.abc import Container
from pathlib import Path

import pytest

from conftest import ROOT, agent_env

SRC = ROOT / "src"
PACKAGE = SRC / "logfire_run"
HEADINGS = ("What it patches:", "When it is enabled:", "How it refuses:", "Where it stops:")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _runtime_imports(tree: ast.Module, module: str, is_package: bool, modules: Container[str]) -> set[str]:
    """Modules of this package imported by `tree` at run time (function-level included, type-only not).

    `from package import submodule` counts as an import of the submodule only: every import of a
    submodule runs its package's `__init__` first, so that edge says nothing about the layers.
    """
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # read by type checkers only
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join([*base, child.module] if child.module else base)
                else:
                    target = child.module or ""
                named = [f"{target}.{alias.name}" for alias in child.names]
                found.update(name for name in named if name in modules)
                if not all(name in modules for name in named):
                    found.add(target)
            visit(child)

    visit(tree)
    return found


def _import_graph() -> dict[str, set[str]]:
    modules = {
        _module_name(path): path for path in PACKAGE.rglob("*.py") if "sitecustomize" not in path.parts
    }
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        imported = _runtime_imports(tree, name, path.name == "__init__.py", modules)
        graph[name] = {target for target in imported if target in modules and target != name}
    return graph


def test_the_import_graph_of_src_has_no_cycle() -> None:
    graph = _import_graph()
    assert "logfire_run.agent.process.state" in graph and graph["logfire_run.agent.bootstrap"]
    visiting: list[str] = []
    done: set[str] = set()

    def walk(node: str) -> None:
        if node in done:
            return
        if node in visiting:
            cycle = [*visiting[visiting.index(node) :], node]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        visiting.append(node)
        for target in sorted(graph[node]):
            walk(target)
        visiting.pop()
        done.add(node)

    for node in sorted(graph):
        walk(node)


#: The layers of src/, top to bottom, each a list of module prefixes (a folder's modules and
#: subfolders belong to it). A module imports its own layer and the layers below it, never one above.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("the public API", ("logfire_run", "logfire_run.propagate", "logfire_run._internal")),
    ("the viewer", ("logfire_run.viewer",)),
    # An instrumentor may start the agent (a spawned pool worker applies its parent's configure()).
    ("the instrumentors", ("logfire_run.instrumentors",)),
    ("the entries", ("logfire_run.agent.cli", "logfire_run.agent.bootstrap", "logfire_run.agent.info")),
    # The entries register the instrumentors' import hooks through the loader.
    ("the instrumentor loader", ("logfire_run.instrumentors.loader",)),
    ("process", ("logfire_run.agent.process",)),
    ("export", ("logfire_run.agent.export",)),
    ("propagation", ("logfire_run.agent.propagation",)),
    ("the agent's stdlib-only bottom", ("logfire_run.agent",)),
    (
        "the files shared with the viewer",
        ("logfire_run.store_format", "logfire_run.store_index", "logfire_run.files", "logfire_run._version"),
    ),
)


def _layer_of(module: str) -> int:
    """The index in LAYERS of the longest prefix that `module` is or sits under."""
    best, best_length = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_length:
                best, best_length = index, len(prefix)
    assert best >= 0, f"{module} is in no layer of tests/test_structure.py's LAYERS"
    return best


def _upward(graph: dict[str, set[str]]) -> list[str]:
    upward = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if _layer_of(target) < _layer_of(module):
                layer, higher = LAYERS[_layer_of(module)][0], LAYERS[_layer_of(target)][0]
                upward.append(f"{module} ({layer}) imports {target} ({higher})")
    return upward


def test_every_import_points_down_the_layers() -> None:
    # The check itself catches an edge that points up.
    assert _upward({"logfire_run.agent.settings": {"logfire_run.agent.process.state"}})
    assert _upward({"logfire_run.agent.process.fork": {"logfire_run.instrumentors.executors"}})
    upward = _upward(_import_graph())
    assert not upward, "imports that point up:\n" + "\n".join(upward)


def test_the_viewer_imports_only_the_shared_files() -> None:
    graph = _import_graph()
    for module, targets in graph.items():
        if module.startswith("logfire_run.viewer"):
            outside = {
                t
                for t in targets
                if not t.startswith(
                    (
                        "logfire_run.viewer",
                        "logfire_run.store_format",
                        "logfire_run.store_index",
                        "logfire_run.files",
                    )
                )
            }
            assert not outside, (module, outside)


def test_no_module_of_src_is_over_600_lines() -> None:
    long = {
        str(path.relative_to(SRC)): lines
        for path in PACKAGE.rglob("*.py")
        if (lines := len(path.read_text().splitlines())) > 600
    }
    assert not long, f"split these by mechanism: {long}"


def test_the_store_variable_is_the_settings_row() -> None:
    from logfire_run import files
    from logfire_run.agent.settings import SETTINGS_BY_NAME

    assert SETTINGS_BY_NAME["store_path"].env == files.STORE_VARIABLE


def test_the_viewer_loads_no_opentelemetry(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from logfire_run.viewer import cli\n"
        "cli.main(['--store', sys.argv[1], '--json'])\n"
        "print(sorted(name for name in sys.modules if name.startswith('opentelemetry')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "missing.db")],
        env=agent_env(),
        capture_output=True,
        text=True,
    )
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout + result.stderr


def _own_entry_points() -> list[tuple[str, str, str]]:
    from importlib import metadata

    found = []
    for entry_point in metadata.distribution("logfire-run").entry_points:
        if entry_point.group.endswith("_instrumentor"):
            found.append((entry_point.group, entry_point.name, entry_point.value))
    assert found, "logfire-run declares no instrumentor entry point"
    return sorted(found)


@pytest.mark.parametrize(("group", "name", "value"), _own_entry_points())
def test_every_instrumentor_of_the_project_has_the_one_shape(group: str, name: str, value: str) -> None:
    from logfire_run.instrumentors._base import DECLARATIONS, Instrumentor
    from logfire_run.instrumentors.loader import read_declarations

    module_name, _, class_name = value.partition(":")
    module = importlib.import_module(module_name)
    cls = getattr(module, class_name)
    assert issubclass(cls, Instrumentor), f"{value} is not built on instrumentors._base.Instrumentor"
    doc = module.__doc__ or ""
    positions = [doc.find(heading) for heading in HEADINGS]
    assert -1 not in positions, f"{module_name}'s docstring lacks {HEADINGS[positions.index(-1)]}"
    assert positions == sorted(positions), f"{module_name}'s docstring headings are out of order"
    # Every declaration is written next to the class, as a literal the loader can read.
    source = ast.parse(Path(module.__file__ or "").read_text())
    body = next(node for node in source.body if isinstance(node, ast.ClassDef) and node.name == class_name)
    declared_here = {
        getattr(getattr(stmt, "target", None), "id", None)
        or getattr((getattr(stmt, "targets", None) or [None])[0], "id", None)
        for stmt in body.body
    }
    assert set(DECLARATIONS) <= declared_here, f"{value} does not declare {set(DECLARATIONS) - declared_here}"
    declared = read_declarations(value)
    assert declared["targets"] and declared["targets"] == cls.targets
    assert declared["supported"] == cls.supported == tuple(cls().instrumentation_dependencies())
    assert declared["options"] == cls.options
    assert declared["supersedes"] == cls.supersedes
    # The shape's one patch helper: no instrumentor hand-rolls wrapt or restores by hand.
    text = Path(module.__file__ or "").read_text()
    assert "wrap_function_wrapper" not in text and "__wrapped__ =" not in text
    # ... and keeps its patches on the instance (PatchingInstrumentor), never in module globals.
    module_level = [node for node in source.body if isinstance(node, (ast.Assign, ast.AnnAssign))]
    assert not any("Patches(" in ast.unparse(node) for node in module_level), (
        f"{value} keeps module-global patches"
    )
    assert "global _active" not in text


def test_config_attributes_are_the_settings_table() -> None:
    from logfire_run.agent.config import Config
    from logfire_run.agent.settings import SETTINGS

    assert set(Config.__annotations__) == {setting.name for setting in SETTINGS}
    config = Config()
    assert {setting.name: getattr(config, setting.name) for setting in SETTINGS} == {
        setting.name: setting.unset for setting in SETTINGS
    }
