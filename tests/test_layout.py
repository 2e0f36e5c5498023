"""The layout: layers, each importing only itself and the layers before it, and no import circle.

Every import statement counts: module level, inside functions, and under TYPE_CHECKING. The layers,
lowest first, are the ones the README's "Layout" section draws.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("models", "tuner", "analysis")

# lowest first; a module may import modules of its own layer and of the layers before it. Each layer of
# tuner/ is a folder; the top of tuner/ holds only the command lines (TOP_OF_TUNER).
LAYERS: dict[str, tuple[str, ...]] = {
    "models": ("models",),
    "config": ("tuner.config",),
    "data": ("tuner.data",),
    "metrics": ("tuner.metrics",),
    "training": ("tuner.training",),
    "study": ("tuner.study",),
    "results": ("tuner.results",),
    "command lines": ("tuner.search", "tuner.train", "tuner.fid"),
    "analysis": ("analysis",),
}
TOP_OF_TUNER = {"__init__.py", "search.py", "train.py", "fid.py"}


def project_modules() -> list[str]:
    return sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                  for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def layer_of(module: str) -> int:
    if module == "tuner":  # the package's empty __init__
        return 0
    for index, prefixes in enumerate(LAYERS.values()):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS (and to the README's layout)")


def source_of(module: str) -> Path:
    path = ROOT / (module.replace(".", "/") + ".py")
    return path if path.is_file() else ROOT / module.replace(".", "/") / "__init__.py"


def imports_of(module: str, known: set[str], path: Path | None = None) -> set[str]:
    """The project modules that `module` imports anywhere in its source."""
    path = path or source_of(module)
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from tuner import loop` imports tuner.training.loop; `from tuner.config import X` imports tuner.config
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                     for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module and name.split(".")[0] in PACKAGES:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    known = set(project_modules())
    return {m: imports_of(m, known) for m in known}


def test_every_module_is_in_a_layer_and_imports_no_layer_above_it():
    graph = import_graph()
    upward = [f"{m} ({list(LAYERS)[layer_of(m)]}) imports {n} ({list(LAYERS)[layer_of(n)]})"
              for m, targets in sorted(graph.items()) for n in sorted(targets) if layer_of(n) > layer_of(m)]
    assert not upward, "imports that point up a layer:\n" + "\n".join(upward)


def test_models_import_nothing_of_tuner_or_analysis_and_tuner_nothing_of_analysis():
    graph = import_graph()
    assert not {n for m, t in graph.items() if m.startswith("models") for n in t if not n.startswith("models")}
    assert not {n for m, t in graph.items() if m.startswith("tuner") for n in t if n.startswith("analysis")}


def test_the_import_graph_has_no_circle():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                circle = path[path.index(target):] + [target]
                pytest.fail("import circle: " + " -> ".join(circle))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_tuner_is_folders_of_layers_and_the_command_lines():
    tuner = ROOT / "tuner"
    top = {p.name for p in tuner.iterdir() if p.suffix == ".py"}
    folders = {p.name for p in tuner.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert top == TOP_OF_TUNER
    assert {f"tuner.{f}" for f in folders} == {p for prefixes in LAYERS.values() for p in prefixes
                                               if p.startswith("tuner.") and p.count(".") == 1} - {
        "tuner.search", "tuner.train", "tuner.fid"}


def test_the_checker_sees_every_kind_of_import(tmp_path):
    # the checker itself must be able to fail: imports hidden in a function and under TYPE_CHECKING count
    source = tmp_path / "a.py"
    source.write_text("from typing import TYPE_CHECKING\n"
                      "import tuner.c as c\n"
                      "if TYPE_CHECKING:\n    from tuner.b import X\n"
                      "def f():\n    from tuner import d, e\n    from analysis.f import g\n")
    known = {"tuner", "tuner.a", "tuner.b", "tuner.c", "tuner.d", "analysis", "analysis.f"}
    assert imports_of("tuner.a", known, source) == {"tuner.b", "tuner.c", "tuner.d", "tuner", "analysis.f"}
    graph = import_graph()
    assert "tuner.config" in graph["tuner.training.loop"]  # a module-level import
    assert "tuner.training.loop" in graph["tuner.study.worker"]  # `from tuner import loop` inside run_trial


def test_every_module_imports_alone():
    # one fresh interpreter; before each module, every project module is dropped from sys.modules,
    # so each one is imported with nothing of the project loaded before it
    modules = [m for m in project_modules() if not m.endswith(".__main__")]  # those run their command
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        f"    for k in [k for k in sys.modules if k.split('.')[0] in {PACKAGES!r}]:\n"
        "        del sys.modules[k]\n"
        "    importlib.import_module(m)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_each_rule_is_declared_once():
    from models.gan import D_NORMS
    from models.losses import LOSS_KEYS, LOSSES, OPTIMIZERS
    from tuner import config
    from tuner.config import space
    from tuner.config import TrainConfig

    assert config.D_NORMS is D_NORMS and config.OPTIMIZERS is OPTIMIZERS
    for loss in LOSSES.values():  # the registry is the only source of a loss's defaults
        assert tuple(loss.defaults()) == LOSS_KEYS
        cfg = TrainConfig(loss=loss.name).resolved()
        assert {k: getattr(cfg, k) for k in LOSS_KEYS} == loss.defaults()
    ranged = {name for ranges in (space.WIDE_GAN_RANGES, space.GAN_RANGES, space.AUTOENCODER_RANGES) for name in ranges}
    gridded = {key for cells in space.GRIDS.values() for cell in cells for key in cell} - {"family"}
    assert ranged | gridded <= set(space.SEARCHABLE)
    assert set(space.LOG_SCALED) == {name for name, r in {**space.WIDE_GAN_RANGES, **space.GAN_RANGES,
                                                          **space.AUTOENCODER_RANGES}.items() if r.log}

    # the names a config accepts, and one entry per name in each registry that serves them
    from tuner.metrics.backbones import BACKBONE_CLASSES
    from tuner.training.families import FAMILY_SPECS
    from tuner.training.steps import STEPS

    assert list(FAMILY_SPECS) == list(STEPS) == list(config.FAMILIES)
    assert sorted(BACKBONE_CLASSES) == sorted(config.BACKBONES)


def test_the_tests_mirror_the_package_tree():
    """tests/<package>/ holds the tests of that package; tests/ itself the project-wide ones (the layout,
    the README, the cluster files, token authentication, every command line's bad input). pytest imports
    test files by their file name, so each name is used once."""
    tests = ROOT / "tests"
    folders = {p.name for p in tests.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))}
    assert folders == {"models", "tuner", "analysis", "benchmarks"}
    assert all((ROOT / name).is_dir() for name in folders)
    layers = {p.relative_to(tests / "tuner") for p in (tests / "tuner").rglob("*") if p.is_dir() and p.name != "__pycache__"}
    assert layers and all((ROOT / "tuner" / layer).is_dir() for layer in layers)  # tests/tuner/<layer>/ mirrors tuner/<layer>/
    assert not list((tests / "tuner").glob("test_*.py"))
    names = [p.name for p in tests.rglob("test_*.py")]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_command_lines_start_without_torch():
    # a typo, a bad value or --help answers at once: the config and study layers import torch only when
    # a trial runs (the loss registry imports it in its functions); ~90 bad-input cases start these commands
    code = ("import sys\nimport tuner.search, tuner.train, tuner.results.exports, analysis.rerun\n"
            "from tuner.config import ConfigError, TrainConfig\nfrom tuner.study.driver import parse\n"
            "for loss in ('bce', 'hinge', 'wgan', 'wgan-gp', 'lsgan'):\n    TrainConfig(loss=loss).resolved()\n"
            "parse(['--losses', 'hinge', 'wgan-gp', '--max-kimg', '8'])\n"
            "try:\n    TrainConfig(loss='hinge', clip_value=0.1)\nexcept ConfigError:\n    pass\n"
            "print(sorted(m for m in ('torch', 'ray', 'optuna') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_the_old_flat_module_names_still_load_a_study_pickled_before_the_layers():
    """Tune pickles a study's searcher, trainable and callbacks by module path; a study started before
    the layers were folders names tuner.optuna_bridge, tuner.space, ...: those names resolve to the new
    modules (a pre-folder study, interrupted, resumed and finished this way on 2026-12-05)."""
    import importlib
    import io
    import pickle

    import tuner
    from tuner.config.space import Range
    from tuner.study.optuna_bridge import HonestOptunaSearch

    # how an unpickler resolves a class a pickle names (without unpickling anything: tests/tuner/study/
    # test_faults.py holds that nothing in the project unpickles)
    resolve = pickle.Unpickler(io.BytesIO(b"")).find_class
    assert resolve("tuner.space", "Range") is Range
    assert resolve("tuner.optuna_bridge", "HonestOptunaSearch") is HonestOptunaSearch
    modules = set(project_modules())
    for old, new in tuner.MOVED.items():
        assert f"tuner.{new}" in modules and f"tuner.{old}" not in modules, old  # a real target; no file shadows it
        assert importlib.import_module(f"tuner.{old}") is importlib.import_module(f"tuner.{new}")
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("tuner.nosuch")
