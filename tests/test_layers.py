"""House rule: the package's import graph has layers and no cycles.

Layers, top to bottom (a module imports only from its own layer or those below):
commands/cli → train → evaluation → ops → model → tokenizer → data → config, metrics, io.
Every import counts, also one inside a function (a lazy import hides an arrow, it does not remove it). A
training stage imports no other stage (shared pieces live in ops/, model/ or data/).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "llms_trainer"
LAYERS = [  # top first; a module's layer is that of its first package component below llms_trainer
    {"commands", "sampler_viewer", "config_reference"},
    {"train"},
    {"evaluation"},
    {"ops"},
    {"model"},
    {"tokenizer"},
    {"data"},
    {"config", "config_descriptions_zh", "metrics", "io", "cli", "paths", "__init__"},  # cli: the shared argparse helper
]
STAGES = "llms_trainer.train.stages"
# Arrows out of config/ still to remove: the eval method names (evaluation/methods.py), the dataset-file
# lists (data.shards) and the policy-file check (data.mixing). Delete each entry when its arrow is gone.
PENDING = {
    ("llms_trainer.config.checks", "llms_trainer.data.mixing"),
    ("llms_trainer.config.checks", "llms_trainer.data.shards"),
    ("llms_trainer.config.checks", "llms_trainer.evaluation.methods"),
    ("llms_trainer.config.loading", "llms_trainer.evaluation.methods"),
    ("llms_trainer.config.schema", "llms_trainer.evaluation.methods"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules `name` imports (a submodule named in `from package import submodule` included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found |= {target for target in targets if target in known and target != name}
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def layer(name: str) -> int:
    first = name.split(".")[1] if "." in name else "__init__"
    return next(i for i, members in enumerate(LAYERS) if first in members)


def test_every_package_module_has_a_layer():
    assert [name for name in modules() if not any(
        (name.split(".")[1] if "." in name else "__init__") in members for members in LAYERS)] == []


def test_no_module_imports_from_a_layer_above_it():
    upward = sorted(f"{source} -> {target}" for source, targets in graph().items() for target in targets
                    if layer(target) < layer(source)
                    and not any(source == a and target.startswith(b) for a, b in PENDING))
    assert upward == []


def stage_of(module: str) -> str:
    """The stage a module of train/stages belongs to (`sections.dpo`, its config section, is part of dpo)."""
    return module.removeprefix(STAGES + ".").removeprefix("sections.").partition(".")[0]


def test_no_stage_imports_another_stage():
    crossing = sorted(f"{source} -> {target}" for source, targets in graph().items() for target in targets
                      if source.startswith(STAGES + ".") and target.startswith(STAGES + ".")
                      and stage_of(source) != stage_of(target))
    assert crossing == []


def test_the_import_graph_has_no_cycle():
    edges = {source: {t for t in targets if not any(source == a and t.startswith(b) for a, b in PENDING)}
             for source, targets in graph().items()}
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        for target in sorted(edges[node]):
            cycle = visit(target, path + [node])
            if cycle:
                return cycle
        done.add(node)
        return None

    for node in sorted(edges):
        cycle = visit(node, [])
        assert cycle is None, " -> ".join(cycle)


def test_the_checker_sees_lazy_relative_and_upward_imports(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    from llms_trainer.train import engine\n    from ..ops import models\n")
    known = {"llms_trainer.train.engine": Path(), "llms_trainer.ops.models": Path(), "llms_trainer.data.x": Path()}
    found = imports_of("llms_trainer.data.x", source, known)
    assert found == {"llms_trainer.train.engine", "llms_trainer.ops.models"}
    assert layer("llms_trainer.train.engine") < layer("llms_trainer.data.x")
