"""The package's imports go one way: each layer imports only itself and the layers below it.

The order is written once, here, and matches README's "Where things are". Every import counts: at the
top of a module, inside a function (deferred for start-up time) and under ``TYPE_CHECKING``, since each
is a dependency of the code that holds it. A failure names the importing file, its line and both layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "emotrain"

# Bottom to top. The process-wide helpers (config, errors, files, console, logging, signals, label schemes,
# shared names) form the base; the composition roots (recipes, and the server around a bundle) sit above
# every layer they wire; the sweep runs recipes; the commands and the command table sit on top.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("config", "errors", "files", "console", "log", "signals", "labels", "names"),
    ("data",),
    ("models",),
    ("training",),
    ("evaluation",),
    ("fusion",),
    ("inference",),
    ("recipes", "serve"),
    ("sweep",),
    ("commands",),
    ("cli",),
)
LAYER_OF = {unit: index for index, units in enumerate(LAYERS) for unit in units}


def unit_of(module: str) -> str | None:
    """``emotrain.training.engine`` -> ``training``; ``emotrain.names`` -> ``names``; other packages -> None."""
    parts = module.split(".")
    return parts[1] if parts[0] == "emotrain" and len(parts) > 1 else None


def imports_of(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, absolute module name) of every emotrain import in one file, wherever it stands."""
    module = "emotrain." + ".".join(path.relative_to(root).with_suffix("").parts)
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = module.split(".")[: len(module.split(".")) - node.level + (path.name == "__init__.py")]
                base = ".".join(package + ([base] if base else []))
            found += [(node.lineno, f"{base}.{alias.name}" if base == "emotrain" else base) for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] == "emotrain"]


def layer_violations(root: Path = PACKAGE) -> list[str]:
    problems = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        source_unit = rel.parts[0].removesuffix(".py")
        if source_unit == "__init__":
            continue
        if source_unit not in LAYER_OF:
            problems.append(f"{rel}: {source_unit!r} is in no layer (add it to LAYERS and README's map)")
            continue
        for line, target in imports_of(path, root):
            target_unit = unit_of(target)
            if target_unit is None or target_unit == source_unit:
                continue
            if target_unit not in LAYER_OF:
                problems.append(f"{rel}:{line}: imports {target}, which is in no layer")
            elif LAYER_OF[target_unit] > LAYER_OF[source_unit]:
                problems.append(f"{rel}:{line}: {source_unit} (layer {LAYER_OF[source_unit]}) imports {target} "
                                f"from the higher layer {target_unit} (layer {LAYER_OF[target_unit]})")
    return problems


def unit_cycles(root: Path = PACKAGE) -> list[list[str]]:
    """Cycles in the graph of subpackage -> subpackage imports (base modules count as one unit each)."""
    edges: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        source = path.relative_to(root).parts[0].removesuffix(".py")
        for _, target in imports_of(path, root):
            unit = unit_of(target)
            if unit is not None and unit != source and source != "__init__":
                edges.setdefault(source, set()).add(unit)
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return cycles


def test_every_import_goes_down_the_layers() -> None:
    problems = layer_violations()
    assert not problems, "\n".join(problems)


def test_no_cycle_between_subpackages() -> None:
    assert unit_cycles() == []


def test_the_readme_map_lists_every_subpackage_in_layer_order() -> None:
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    tree = readme[readme.index("## Where things are"):readme.index("## Troubleshooting")]
    subpackages = [p.name for p in sorted(PACKAGE.iterdir()) if (p / "__init__.py").is_file()]
    ordered = [unit for units in LAYERS for unit in units if unit in subpackages]
    assert sorted(ordered) == sorted(subpackages), "a subpackage is missing from LAYERS"
    positions = [tree.index(f"\n  {name}/") for name in ordered]
    assert positions == sorted(positions), f"README's map does not list {ordered} in layer order"


def test_no_test_module_imports_another() -> None:
    """What several test modules use lives in helper modules (``helpers.py``, ``corpus.py``, ...): a test module
    imported by another brings its fixtures along as a second copy, and ties the two modules' edits together."""
    tests = Path(__file__).resolve().parent
    found = []
    for path in sorted(tests.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            found += [f"{path.name}:{node.lineno}: {name}" for name in names if name.split(".")[0].startswith("test_")]
    assert found == [], found


@pytest.mark.parametrize("importer, imported, expected, cycle", [
    ("data/stream.py", "from emotrain.training.engine import fit", "data (layer 1) imports emotrain.training.engine", True),
    ("training/engine.py", "from emotrain.recipes.train import run_training", "training (layer 3) imports emotrain.recipes",
     True),
    ("evaluation/scoring.py", "    from emotrain import cli", "evaluation (layer 4) imports emotrain.cli", False),
])
def test_a_reintroduced_upward_import_or_cycle_fails(tmp_path: Path, importer: str, imported: str, expected: str,
                                                     cycle: bool) -> None:
    """The checks catch what they exist for: a copy of the package with one import added the wrong way."""
    import shutil

    copy = tmp_path / "emotrain"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("configs", "__pycache__"))
    target = copy / importer
    source = target.read_text(encoding="utf-8")
    if imported.startswith("    "):
        target.write_text(source + "\n\ndef _probe():\n" + imported + "\n", encoding="utf-8")
    else:
        target.write_text(source + "\n" + imported + "\n", encoding="utf-8")
    assert any(expected in problem for problem in layer_violations(copy)), layer_violations(copy)
    # training imports data and recipes import training: the first two close a cycle, the third (cli imports
    # no evaluation) does not
    assert bool(unit_cycles(copy)) == cycle
