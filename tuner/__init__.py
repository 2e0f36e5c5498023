"""gentune's tuner, in layers, each a folder that imports only the ones before it (README "Layout"):
config -> data -> metrics -> training -> study -> results, and the command lines search.py, train.py
and fid.py at the top.

Studies started before the layers were folders (2026-12-05) hold pickles (Tune's experiment and
searcher state) that name the old flat modules, `tuner.optuna_bridge` and the like. `MOVED` maps each
old name to its new module, so those studies still resume: an import of an old name returns the new
module (nothing else is found under the old names)."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {
    "cli": "config.cli", "paths": "config.paths", "schema": "config.schema", "atomic": "config.atomic",
    "cluster_token": "config.cluster_token", "space": "config.space",
    "backbones": "metrics.backbones", "domain": "metrics.domain", "diversity": "metrics.diversity",
    "metrics_cache": "metrics.metrics_cache",
    "families": "training.families", "precision": "training.precision", "trial": "training.trial",
    "steps": "training.steps", "checkpoint": "training.checkpoint", "evaluate": "training.evaluate",
    "loop": "training.loop", "fused": "training.fused", "pack": "training.pack", "progress": "training.progress",
    "optuna_bridge": "study.optuna_bridge", "console": "study.console", "storage": "study.storage",
    "staging": "study.staging", "worker": "study.worker", "packing": "study.packing", "resume": "study.resume",
    "watch": "study.watch", "exports": "results.exports",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """tuner.<old name> -> the module it moved to (consulted only when no file has the old name)."""

    def find_spec(self, fullname, path=None, target=None):
        package, _, name = fullname.partition(".")
        if package == __name__ and name in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(f"{__name__}.{MOVED[spec.name.partition('.')[2]]}")

    def exec_module(self, module) -> None:
        pass  # the new module, already executed


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModules())
