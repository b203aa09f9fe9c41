"""The package's import graph follows STYLE.md's one-way layers.

The graph is read with :mod:`ast` from every ``lightning_unlearn/**/*.py`` (module-level,
function-level and ``TYPE_CHECKING`` imports alike: each is a dependency a reader must follow).
Three rules:

- a module imports only its own layer's package or a layer below it (STYLE "Architecture");
- no module imports a private (underscore) module of another package;
- no import cycles.

Where the code does not follow a rule yet, the exception is listed below by name. The lists
may only shrink: a listed exception that no longer occurs fails the test too, so whoever fixes one
removes it here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

import lightning_unlearn

PACKAGE_DIR = Path(lightning_unlearn.__file__).parent
ROOT = "lightning_unlearn"

# STYLE.md's order, lowest first. A package may import its own layer's modules and those of
# lower ranks. The shared leaf modules (errors, validation, integrity, sample_ids: how an
# example's id is read from a batch or a loader's sampler) sit below accounting; models.py and
# report/ (the reports' content and its plots) sit below experiments/, which the command line
# only wraps.
LAYERS: dict[str, int] = {
    "lightning_unlearn.errors": 0,
    "lightning_unlearn.validation": 1,
    "lightning_unlearn.integrity": 1,
    "lightning_unlearn.sample_ids": 1,
    "lightning_unlearn.accounting": 2,
    "lightning_unlearn.evaluation.functional": 2,
    "lightning_unlearn.grad_norms": 3,
    "lightning_unlearn.data": 4,
    "lightning_unlearn.callbacks": 5,
    "lightning_unlearn.unlearning": 6,
    "lightning_unlearn.evaluation": 7,
    "lightning_unlearn.models": 8,
    "lightning_unlearn.checkpoints": 8,
    "lightning_unlearn.report": 8,
    "lightning_unlearn.experiments": 9,
    "lightning_unlearn.cli": 10,
}

# Known layer violations, (importer, imported): none. The evaluation functions read sample ids
# through the leaf module `lightning_unlearn.sample_ids` (re-exported by `data`), not `data`.
KNOWN_LAYER_VIOLATIONS: set[tuple[str, str]] = set()

# Known import cycles (strongly connected groups of modules): none. The fused engine's parts
# type their engine argument with the `fused_ops.FusedEngine` protocol, the self-check gets its
# inputs explicitly (`SelfCheckInputs`), the reference statistics save through `integrity`.
KNOWN_CYCLES: set[frozenset[str]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph() -> nx.DiGraph:
    """Every module of the package, with an edge for each import of another of its modules."""
    files = {_module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}
    graph = nx.DiGraph()
    graph.add_nodes_from(files)
    for module, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module]
                # `from package import submodule` depends on the submodule itself
                targets += [f"{node.module}.{a.name}" for a in node.names]
            for target in targets:
                if target in files and target != module:
                    graph.add_edge(module, target)
    return graph


def _layer(module: str) -> tuple[str, int] | None:
    matches = [(p, r) for p, r in LAYERS.items() if module == p or module.startswith(p + ".")]
    return max(matches, key=lambda m: len(m[0])) if matches else None


def layer_violations(graph: nx.DiGraph) -> set[tuple[str, str]]:
    found = set()
    for importer, imported in graph.edges:
        # the root package (its `__version__`) is loaded before any submodule anyway
        if ROOT in (importer, imported):
            continue
        src, dst = _layer(importer), _layer(imported)
        assert src is not None, f"{importer} is in no layer: add its package to LAYERS"
        assert dst is not None, f"{imported} is in no layer: add its package to LAYERS"
        if src[0] != dst[0] and dst[1] >= src[1]:
            found.add((importer, imported))
    return found


def private_imports(graph: nx.DiGraph) -> set[tuple[str, str]]:
    """(importer, private module) where the importer is outside the private module's package."""
    found = set()
    for importer, imported in graph.edges:
        parts = imported.split(".")
        for i, part in enumerate(parts[1:], start=1):
            if part.startswith("_"):
                owner = ".".join(parts[:i])
                if not importer.startswith(owner + ".") and importer != owner:
                    found.add((importer, imported))
                break
    return found


def import_cycles(graph: nx.DiGraph) -> set[frozenset[str]]:
    return {frozenset(c) for c in nx.strongly_connected_components(graph) if len(c) > 1}


def test_graph_sees_the_package() -> None:
    graph = import_graph()
    assert graph.has_edge("lightning_unlearn.accounting.ledger", "lightning_unlearn.errors")
    assert graph.has_edge("lightning_unlearn.experiments.pipeline", "lightning_unlearn.callbacks")


def test_layers_are_one_way() -> None:
    found = layer_violations(import_graph())
    assert found - KNOWN_LAYER_VIOLATIONS == set(), "imports against STYLE's layer order"
    assert KNOWN_LAYER_VIOLATIONS - found == set(), "fixed: remove from KNOWN_LAYER_VIOLATIONS"
    assert found == set()


def test_no_private_module_of_another_package() -> None:
    assert private_imports(import_graph()) == set()


def test_no_import_cycles() -> None:
    found = import_cycles(import_graph())
    assert found - KNOWN_CYCLES == set(), "new import cycle"
    assert KNOWN_CYCLES - found == set(), "fixed: remove from KNOWN_CYCLES"
    assert found == set()


def test_rules_can_fail() -> None:
    """The checks flag a synthetic upward import, private import and cycle."""
    graph = nx.DiGraph()
    graph.add_edge("lightning_unlearn.accounting.ledger", "lightning_unlearn.callbacks.x")
    graph.add_edge("lightning_unlearn.callbacks.x", "lightning_unlearn.accounting._ledger_checks")
    graph.add_edge("lightning_unlearn.callbacks.x", "lightning_unlearn.accounting.ledger")
    assert layer_violations(graph) == {
        ("lightning_unlearn.accounting.ledger", "lightning_unlearn.callbacks.x")
    }
    assert private_imports(graph) == {
        ("lightning_unlearn.callbacks.x", "lightning_unlearn.accounting._ledger_checks")
    }
    assert len(import_cycles(graph)) == 1
