"""Load experiments into pandas frames: the exports, the Optuna study, and a few derived tables.

    exp = load_experiment("~/gentune_results/study")      # one experiment
    exps = load_experiments([tuned_dir, grid_dir])         # several; frames gain an `experiment` column

An experiment folder holds the exports written by tuner/results/exports.py (trials.parquet, history.parquet,
best.json), search_config.json, and for a search also optuna.journal. When Ray Tune's
experiment_state file is there, the frames are rebuilt from Ray's own records with
`tuner.results.exports.build_frames` (the function that writes the exports), so a study that is still
running can be analysed too; otherwise the export files are read.

Everything here is data: no plotting, no text.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from tuner.config.space import SEARCHABLE as PARAM_CANDIDATES  # what a search or a grid may vary, in report order

CATEGORICAL_PARAMS = ("loss", "d_norm", "optimizer", "arch", "regularize")
# A generator is flagged as (partly) mode-collapsed when its samples cover fewer than
# COLLAPSE_CLASSES of the 10 classes (a class is covered at >= 5% of the samples, tuner/metrics/diversity.py),
# or when the KL of its class shares from uniform exceeds COLLAPSE_KL nats: log(10/6) ~ 0.51 is
# the KL of samples spread evenly over only 6 classes.
COLLAPSE_CLASSES = 8
COLLAPSE_KL = 0.5
# Low class coverage means mode collapse only in a generator that already draws the data: above this
# FID the samples are not yet recognisable images (the old 8-kimg default study's winner, grey blobs,
# scored 318.5 with the domain backbone at 1000 samples; the first recognisable garments appear around
# 160), so low coverage there says "not yet trained", not "collapsed".
UNTRAINED_FID = 200.0


class NotEnoughData(ValueError):
    """The frames cannot answer this question or draw this plot; the message says why."""


@dataclass
class Experiment:
    """One experiment folder, loaded."""

    name: str
    path: Path
    trials: pd.DataFrame
    """One row per trial (tuner/results/exports.py schema) plus `experiment`, `trial_index` (creation order),
    `kind` (the GAN loss, or the family for VAE/AE) and `label` (e.g. 'hinge z64 #3')."""
    history: pd.DataFrame
    """One row per evaluation (tuner/results/exports.py schema) plus `experiment`, `eval_index`, `clock_s`."""
    best: dict[str, Any] | None
    search: dict[str, Any]
    """search_config.json: {"search": SearchConfig, "base": TrainConfig, "space_overrides": {...}}."""
    is_grid: bool
    study: Any = None
    """The optuna.Study of a search (None for a grid, or when optuna.journal is absent)."""
    source: str = "exports"
    """'ray' when the frames were rebuilt from Ray's records, 'exports' when read from the files."""
    notes: list[str] = field(default_factory=list)

    @property
    def max_kimg(self) -> float:
        return float(self.search["base"]["max_kimg"])

    @property
    def space(self) -> list[str]:
        """The parameters this experiment varies (grid axes or search space)."""
        return space_params(self.search)

    @property
    def floor_text(self) -> str:
        """The real-vs-real floor of this experiment's FID, recorded when it started (search_config.json)."""
        floor = self.search.get("fid_floor")
        if not floor:
            return ("real-vs-real floor: not recorded (an experiment started before gentune recorded it; "
                    "`python -m tuner.fid DATASET:train DATASET:test --backbone B --limit N` measures it)")
        return (f"real-vs-real floor: {floor['fid']:.2f} ({floor['dataset']} train vs test images, "
                f"{floor['fid_backbone']} backbone, {floor['fid_samples']} each): what a perfect generator would score")

    @property
    def kind(self) -> str:
        grid = self.search["search"].get("grid")
        return f"grid {grid} (full budget, no early stopping)" if grid else "Optuna TPE + ASHA search"


@dataclass
class ExperimentSet:
    """Several experiments; `trials` and `history` are their frames concatenated."""

    experiments: list[Experiment]
    trials: pd.DataFrame
    history: pd.DataFrame

    def __iter__(self):
        return iter(self.experiments)

    def __len__(self) -> int:
        return len(self.experiments)

    @property
    def space(self) -> list[str]:
        """The union of the experiments' varied parameters."""
        names = {p for e in self.experiments for p in e.space}
        return [p for p in PARAM_CANDIDATES if p in names]

    def __getitem__(self, name: str) -> Experiment:
        for exp in self.experiments:
            if exp.name == name:
                return exp
        raise KeyError(name)


# ------------------------------------------------------------------------------------------
# loading


def load_experiment(path: str | Path, rebuild: bool | None = None, name: str | None = None) -> Experiment:
    """Load one experiment folder.

    rebuild: True rebuilds the frames from Ray's records (works while the study runs), False
    reads the export files, None (default) rebuilds when Ray's experiment_state file is present.
    """
    path = Path(path).expanduser().resolve()
    config_file = path / "search_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} is not a gentune experiment: it has no search_config.json")
    search = json.loads(config_file.read_text())
    notes: list[str] = []
    has_state = any(path.glob("experiment_state*.json"))
    if rebuild is None:
        rebuild = has_state
    frames, source = None, "exports"
    if rebuild:
        try:
            from tuner.results.exports import build_frames

            frames, source = build_frames(path), "ray"
        except Exception as err:  # e.g. Ray's records half-written; the exports may still be there
            if not (path / "trials.parquet").is_file() and not (path / "trials.csv").is_file():
                raise RuntimeError(f"{path}: could not rebuild the frames from Ray's records "
                                   f"({type(err).__name__}: {err}) and there are no exports yet") from err
            notes.append(f"{path.name}: could not rebuild the frames from Ray's records ({type(err).__name__}: {err}); "
                         "used the export files written when the study ended")
    if frames is None:
        frames = read_exports(path)
    trials = tidy_trials(frames["trials"], path.name if name is None else name)
    history = tidy_history(frames["history"], trials, path)
    is_grid = bool(search["search"].get("grid"))
    study = None if is_grid else load_study(path, search["search"]["name"])
    return Experiment(name or path.name, path, trials, history, frames.get("best"), search, is_grid, study, source, notes)


def load_experiments(paths: list[str | Path], rebuild: bool | None = None) -> ExperimentSet:
    """Load several experiments; names are folder names, made unique with the parent folder."""
    paths = [Path(p).expanduser().resolve() for p in paths]
    names = [p.name for p in paths]
    names = [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]
    if len(set(names)) < len(names):
        raise ValueError(f"the same experiment was given twice: {', '.join(map(str, paths))}")
    exps = [load_experiment(p, rebuild=rebuild, name=n) for p, n in zip(paths, names)]
    trials = pd.concat([e.trials for e in exps], ignore_index=True) if exps else pd.DataFrame()
    history = pd.concat([e.history for e in exps if not e.history.empty], ignore_index=True) \
        if any(not e.history.empty for e in exps) else _empty_history()
    from tuner.results.exports import classifier_mix

    mix = classifier_mix(history, "the experiment" + ("s " if len(exps) > 1 else " ") + ", ".join(e.name for e in exps))
    if mix:  # one table must not hold FIDs of two feature spaces
        raise RuntimeError(mix)
    return ExperimentSet(exps, trials, history)


def read_exports(path: Path) -> dict[str, Any]:
    if (path / "trials.parquet").is_file():
        trials = pd.read_parquet(path / "trials.parquet")
    elif (path / "trials.csv").is_file():
        from tuner.results.exports import read_trials_csv

        trials = read_trials_csv(path / "trials.csv")
    else:
        raise FileNotFoundError(f"{path} has neither Ray's experiment_state nor trials.parquet / trials.csv")
    history = pd.read_parquet(path / "history.parquet") if (path / "history.parquet").is_file() else _empty_history()
    best_file = path / "best.json"
    best = json.loads(best_file.read_text()) if best_file.is_file() else None
    return {"trials": trials, "history": history, "best": best}


def load_study(path: Path, study_name: str):
    """The Optuna study of a search, or None when optuna.journal is absent or unreadable."""
    journal = path / "optuna.journal"
    if not journal.is_file():
        return None
    import optuna

    from tuner.study.optuna_bridge import load_journal_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return load_journal_study(str(journal), study_name)
    except Exception:  # a journal from another study name, or a torn last line
        return None


def _empty_history() -> pd.DataFrame:
    return pd.DataFrame({"trial_id": pd.Series(dtype=str), "kimg": pd.Series(dtype=float),
                         "fid": pd.Series(dtype=float)})


# ------------------------------------------------------------------------------------------
# tidying: add the columns every plot needs, never change an exported value


def tidy_trials(trials: pd.DataFrame, experiment: str) -> pd.DataFrame:
    trials = trials.copy()
    trials.insert(0, "experiment", experiment)
    if trials.empty:
        for col in ("trial_id", "status", "family", "loss", "z_dim", "fid_best", "fid_final", "kimg"):
            if col not in trials:
                trials[col] = pd.Series(dtype=float)
        trials["trial_index"] = pd.Series(dtype=int)
        trials["kind"] = pd.Series(dtype=str)
        trials["label"] = pd.Series(dtype=str)
        return trials
    for col in ("fid_best", "fid_final", "kimg", "wall_time_s"):
        if col in trials:
            trials[col] = pd.to_numeric(trials[col], errors="coerce")
    if "loss" in trials:
        trials["loss"] = trials["loss"].astype(object).where(trials["loss"].notna(), None)
    # Ray numbers trials in creation order: <id>_00000, <id>_00001, ...
    suffix = trials["trial_id"].astype(str).str.extract(r"_(\d+)$")[0]
    trials["trial_index"] = pd.to_numeric(suffix, errors="coerce").fillna(pd.Series(range(len(trials)))).astype(int)
    trials["kind"] = [row.get("loss") if row.get("family") == "gan" and isinstance(row.get("loss"), str)
                      else row.get("family") for row in trials.to_dict("records")]
    trials["label"] = [trial_label(row) for row in trials.to_dict("records")]
    return trials


def trial_label(row: dict[str, Any]) -> str:
    """A short name of a trial's config: 'hinge z64 #3', 'vae z16 #0'."""
    family = row.get("family")
    head = row.get("loss") if family == "gan" and isinstance(row.get("loss"), str) else family
    z = row.get("z_dim")
    z = f" z{int(z)}" if z is not None and not pd.isna(z) else ""
    return f"{head}{z} #{row.get('trial_index', '?')}"


def tidy_history(history: pd.DataFrame, trials: pd.DataFrame, path: Path) -> pd.DataFrame:
    history = history.copy()
    experiment = trials["experiment"].iloc[0] if len(trials) else path.name
    history.insert(0, "experiment", experiment)
    if history.empty:
        history["eval_index"] = pd.Series(dtype=int)
        history["clock_s"] = pd.Series(dtype=float)
        return history
    history["fid"] = pd.to_numeric(history["fid"], errors="coerce")
    if "diverged" in history:
        history["diverged"] = history["diverged"].fillna(False).astype(bool)
    history = history.sort_values(["trial_id", "kimg"]).reset_index(drop=True)
    history["eval_index"] = history.groupby("trial_id").cumcount()
    history["clock_s"] = evaluation_clock(history, trials, path)
    return history


def evaluation_clock(history: pd.DataFrame, trials: pd.DataFrame, path: Path) -> pd.Series:
    """Seconds since the experiment's first trial started, for every evaluation.

    Ray's result.json (in each trial folder) holds the wall-clock timestamp of every report; a
    trial's start is estimated as min(timestamp - wall_time_s) over its reports, and an evaluation's
    clock is that start plus its wall_time_s. Without result.json every trial is taken to start at 0
    (the ordering is then by each trial's own elapsed time, ties by trial creation order).
    """
    elapsed = pd.to_numeric(history.get("wall_time_s", history.get("time_s")), errors="coerce")
    if elapsed is None or elapsed.isna().all():
        elapsed = pd.to_numeric(history.get("time_s"), errors="coerce")
    elapsed = elapsed.fillna(0.0) if elapsed is not None else pd.Series(0.0, index=history.index)
    starts: dict[str, float] = {}
    trial_dirs = dict(zip(trials["trial_id"], trials.get("trial_dir", pd.Series("", index=trials.index))))
    for trial_id, trial_dir in trial_dirs.items():
        stamps = _report_timestamps(path / str(trial_dir) / "result.json") if trial_dir else []
        if stamps:
            starts[trial_id] = min(ts - t for ts, t in stamps)
    if not starts:
        return elapsed.astype(float)
    origin = min(starts.values())
    start = history["trial_id"].map(lambda t: starts.get(t, origin) - origin)
    return (start + elapsed).astype(float)


def _report_timestamps(result_json: Path) -> list[tuple[float, float]]:
    """(timestamp, time_total_s) of each report in Ray's result.json."""
    if not result_json.is_file():
        return []
    out = []
    for line in result_json.read_text().splitlines():
        try:
            rec = json.loads(line)
            out.append((float(rec["timestamp"]), float(rec.get("time_total_s", 0.0))))
        except (ValueError, KeyError, TypeError):
            continue  # a line being written right now
    return out


# ------------------------------------------------------------------------------------------
# derived tables (shared by plots, answers and the report)


def finite(values: pd.Series) -> pd.Series:
    values = pd.to_numeric(values, errors="coerce")
    return values.where(np.isfinite(values))


def space_params(search: dict[str, Any]) -> list[str]:
    """The parameters an experiment varies, from its search_config.json: a grid's axes, or the
    search space (tuner.config.space ranges with their overrides, plus the loss for GANs)."""
    from tuner.config.space import GRIDS, build_ranges

    base = search["base"]
    grid = search["search"].get("grid")
    if grid:
        keys = dict.fromkeys(k for cell in GRIDS.get(grid, []) for k, v in cell.items() if v is not None)
        return [k for k in PARAM_CANDIDATES if k in keys]
    try:
        ranges = build_ranges(base["family"], search.get("space_overrides") or {}, search["search"].get("space", "default"))
    except Exception:
        return list(PARAM_CANDIDATES)
    names = (["loss"] if base["family"] == "gan" else []) + [k for k in ranges if not (k == "kl_beta" and base["family"] != "vae")]
    return [k for k in PARAM_CANDIDATES if k in names]


def searched_params(trials: pd.DataFrame, candidates: Sequence[str] | None = None) -> list[str]:
    """The parameters (of `candidates`, default every searchable field) that vary across these trials."""
    out = []
    for name in candidates or PARAM_CANDIDATES:
        if name not in trials or trials.empty:
            continue
        values = trials[name].dropna()
        if values.astype(str).nunique() > 1:
            out.append(name)
    return out


def is_categorical(trials: pd.DataFrame, param: str) -> bool:
    if param in CATEGORICAL_PARAMS:
        return True
    values = trials[param].dropna()
    return pd.to_numeric(values, errors="coerce").isna().any()


def final_evaluations(trials: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """For every trial, its last evaluation with a finite FID, with the trial's config columns.

    Use this (not the trials frame) for the VAE's total loss: in trials.parquet the column `loss`
    is the GAN loss config field, so the VAE metric of the same name is not there."""
    if history.empty:
        return history
    h = history[finite(history["fid"]).notna()].sort_values("kimg")
    last = h.groupby(["experiment", "trial_id"], as_index=False).tail(1)
    cfg_cols = [c for c in trials.columns if c not in last.columns or c in ("experiment", "trial_id")]
    return last.merge(trials[cfg_cols], on=["experiment", "trial_id"], how="inner")


def fid_setup(trials: pd.DataFrame) -> list[tuple[str, int]]:
    """The distinct (fid_backbone, fid_samples) pairs of these trials: FIDs compare only within one."""
    if trials.empty or "fid_backbone" not in trials:
        return []
    pairs = trials[["fid_backbone", "fid_samples"]].dropna().drop_duplicates()
    return [(str(b), int(n)) for b, n in pairs.itertuples(index=False)]


def fid_setup_text(trials: pd.DataFrame) -> str:
    pairs = fid_setup(trials)
    if not pairs:
        return "FID setup unknown"
    text = "; ".join(f"{b} backbone, {n} samples" for b, n in pairs)
    if len(pairs) > 1:
        text += " (NOT comparable with each other)"
    return text


def ranked(trials: pd.DataFrame, family: str | None = None) -> pd.DataFrame:
    """Trials with a finite best FID, best first (ties by trial creation order)."""
    out = trials if family is None else trials[trials["family"] == family]
    out = out[finite(out["fid_best"]).notna()]
    return out.sort_values(["fid_best", "trial_index"], kind="stable")


def best_evaluations(trials: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """For every trial, the history row of its best (lowest finite) FID, with the trial's config."""
    if history.empty:
        return history
    h = history[finite(history["fid"]).notna()]
    if h.empty:
        return h
    idx = h.groupby(["experiment", "trial_id"])["fid"].idxmin()
    best = h.loc[idx.values]
    cfg_cols = [c for c in trials.columns if c not in best.columns or c in ("experiment", "trial_id")]
    return best.merge(trials[cfg_cols], on=["experiment", "trial_id"], how="inner")


def class_hist(value: Any) -> list[float] | None:
    """A class histogram from a frame cell: a list/array (history) or a JSON string (trials)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if isinstance(value, float) and math.isnan(value):
        return None
    try:
        return [float(v) for v in value]
    except TypeError:
        return None


def real_class_hist(dataset: str) -> tuple[list[float], str]:
    """(class shares of the dataset's test split, where they come from)."""
    try:
        from tuner.data import load_split

        _, labels = load_split(dataset, "test")
        counts = np.bincount(labels.numpy(), minlength=10).astype(float)
        return (counts / counts.sum()).tolist(), f"{dataset} test split ({int(counts.sum())} labels)"
    except Exception as err:  # dataset not on this machine
        return [0.1] * 10, f"assumed uniform: the {dataset} test labels could not be read ({type(err).__name__})"


def compute_curve(history: pd.DataFrame) -> pd.DataFrame:
    """Best-FID-so-far against cumulative kimg, per experiment.

    Evaluations are ordered by `clock_s` (wall-clock since the experiment started; ties by trial
    creation order and kimg); each evaluation adds the kimg its trial trained since its previous
    evaluation. Diverged evaluations add their kimg but no FID.
    """
    if history.empty:
        return pd.DataFrame(columns=["experiment", "trial_id", "kimg", "clock_s", "kimg_spent", "cum_kimg", "best_so_far"])
    parts = []
    for exp, h in history.groupby("experiment", sort=False):
        h = h.sort_values(["trial_id", "kimg"]).copy()
        h["kimg_spent"] = h.groupby("trial_id")["kimg"].diff().fillna(h["kimg"])
        order = h["trial_id"].astype(str).str.extract(r"_(\d+)$")[0]
        h["_order"] = pd.to_numeric(order, errors="coerce").fillna(0)
        h = h.sort_values(["clock_s", "_order", "kimg"], kind="stable").drop(columns="_order")
        h["cum_kimg"] = h["kimg_spent"].cumsum()
        h["best_so_far"] = finite(h["fid"]).cummin()
        parts.append(h[["experiment", "trial_id", "kimg", "clock_s", "kimg_spent", "cum_kimg", "fid", "best_so_far"]])
    return pd.concat(parts, ignore_index=True)


def seed_groups(exps: ExperimentSet | list[Experiment]) -> dict[str, list[Experiment]]:
    """Experiments that differ only in their seed (and name): the same study run with several seeds.

    Keyed by a short label (the first member's name without its seed); only groups of 2 or more."""
    import dataclasses

    from tuner.config import TrainConfig
    from tuner.config.search import SearchConfig

    # fields that say where or how a study ran, not what it searched; and the defaults of fields an
    # older gentune did not save, so that studies saved by different versions still compare
    ignored = ("name", "resume", "address", "storage_path", "verbose", "allow_shrink", "max_failures")
    defaults = {f.name: f.default for f in dataclasses.fields(SearchConfig)}
    base_defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    groups: dict[str, list[Experiment]] = {}
    for e in exps:
        search = {k: v for k, v in {**defaults, **e.search["search"]}.items() if k not in ignored}
        base = {k: v for k, v in {**base_defaults, **e.search["base"]}.items() if k != "seed"}
        key = json.dumps([search, base, e.search.get("space_overrides") or {}], sort_keys=True, default=str)
        groups.setdefault(key, []).append(e)
    out = {}
    for members in groups.values():
        if len(members) >= 2:
            sampler = members[0].search["search"].get("sampler", "tpe")
            label = "grid " + str(members[0].search["search"]["grid"]) if members[0].is_grid else (
                "random search + ASHA" if sampler == "random" else "TPE + ASHA study")
            out[f"{label}, {len(members)} seeds"] = members
    return out


def compute_totals(exps: ExperimentSet | list[Experiment]) -> pd.DataFrame:
    """Per experiment: trials, kimg spent (sum of each trial's kimg reached), and the full-budget
    grid equivalent (trials x max_kimg)."""
    rows = []
    for exp in exps:
        t = exp.trials
        rows.append({
            "experiment": exp.name,
            "trials": len(t),
            "kimg_spent": float(t["kimg"].sum()) if len(t) else 0.0,
            "max_kimg": exp.max_kimg,
            "full_budget_kimg": len(t) * exp.max_kimg,
            "wall_time_s": float(t["wall_time_s"].sum()) if "wall_time_s" in t and len(t) else math.nan,
        })
    return pd.DataFrame(rows)


_WORDS = dict(enumerate(("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")))


def param_importances(study, min_complete: int = 5) -> tuple[pd.DataFrame, dict[str, Any]]:
    """PED-ANOVA importances (Optuna's built-in evaluator, conditional parameters included) on the
    study's COMPLETE trials only: those that trained the full budget. ASHA-pruned (PRUNED),
    diverged and errored (FAIL) trials are left out, since their FIDs are at a lower budget or none.

    Returns (frame of param, importance, trials_with_param; best first) and the method's facts.
    Raises NotEnoughData.
    """
    if study is None:
        raise NotEnoughData("no Optuna study (a grid experiment, or optuna.journal is missing)")
    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    n = len(complete)
    if n < min_complete:
        # the minimum is spelled out: it is a rule, not a number read from the data
        raise NotEnoughData(f"{n} COMPLETE (full-budget) trial(s) in the Optuna study; importance needs at least "
                            f"{_WORDS.get(min_complete, min_complete)}")
    varying = sorted({k for t in complete for k in t.params
                      if len({repr(u.params[k]) for u in complete if k in u.params}) > 1})
    if not varying:
        raise NotEnoughData("no parameter takes two different values among the COMPLETE trials")
    # top quantile: 10% as in the paper, but at least 2 trials so that it is more than one point
    quantile = min(0.5, max(0.1, 2.0 / n))
    evaluator = PedAnovaImportanceEvaluator(target_quantile=quantile)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        values = get_param_importances(study, evaluator=evaluator, params=varying)
    frame = pd.DataFrame({
        "param": list(values),
        "importance": [float(v) for v in values.values()],
        "trials_with_param": [sum(1 for t in complete if p in t.params) for p in values],
    })
    facts = {
        "method": "PED-ANOVA (optuna.importance.PedAnovaImportanceEvaluator, conditional parameters included)",
        "target_quantile": quantile,
        "complete_trials": n,
        "all_trials": len(study.get_trials(deepcopy=False)),
        "warnings": sorted({str(w.message) for w in caught}),
    }
    return frame, facts
