"""The package's structure as the design brief states it: no import cycle, one shape for instrumentors,
the settings table as the one source, the viewer free of OpenTelemetry."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
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


def _runtime_imports(tree: ast.Module, module: str, is_package: bool) -> set[str]:
    """Modules of this package imported by `tree` at run time (function-level included, type-only not)."""
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
                found.add(target)
                # `from package import submodule` imports the submodule.
                found.update(f"{target}.{alias.name}" for alias in child.names)
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
        imported = _runtime_imports(tree, name, path.name == "__init__.py")
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


def test_layers_point_down() -> None:
    graph = _import_graph()
    bottom = (
        "logfire_run.agent.settings",
        "logfire_run.agent.paths",
        "logfire_run.store_format",
        "logfire_run.agent.destination",
        "logfire_run.agent.otel_env",
    )
    for module in bottom:
        allowed = {
            "logfire_run.agent",
            *(
                f"logfire_run.agent.{name}"
                for name in ("errors", "paths", "settings", "destination", "otel_env")
            ),
        }
        assert graph[module] <= allowed, (module, graph[module])
    # The loader depends on the process state for one thing, never on the entry that calls it.
    assert "logfire_run.agent.bootstrap" not in graph["logfire_run.instrumentors.loader"]
    assert "logfire_run.agent.bootstrap" not in graph["logfire_run.agent.process.state"]


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


def test_config_attributes_are_the_settings_table() -> None:
    from logfire_run.agent.config import Config
    from logfire_run.agent.settings import SETTINGS

    assert set(Config.__annotations__) == {setting.name for setting in SETTINGS}
    config = Config()
    assert {setting.name: getattr(config, setting.name) for setting in SETTINGS} == {
        setting.name: setting.unset for setting in SETTINGS
    }
