"""The final evaluation: the top configs of a study retrained with new seeds, as one Ray Tune run.

    python -m analysis.rerun EXPERIMENT_DIR --top 1 --final            # the literature's protocol
    python -m analysis.rerun EXPERIMENT_DIR --top 3 --seeds 3 --max-kimg 64 --fid-backbone domain

The cells (top-K configs x seeds) are a `tune.grid_search` under a FIFO scheduler: every cell trains
its full budget, nothing is stopped early. Trials run through tuner.study.driver's own trainable (tuner/study/worker.py:run_trial)
(run_trial): the same resource flags, checkpoints at each evaluation, retries from the last
checkpoint when a worker dies (FailureConfig(max_failures)). The run is a Tune experiment of its
own under OUT (default EXPERIMENT_DIR/rerun/final-<protocol>-<plan hash>): the same command after an
interrupt restores it (Tuner.restore) and continues; cells already in EXPERIMENT_DIR/rerun.parquet are
not run again.

`--set FIELD=VALUE` re-trains the configs with some model or optimiser fields changed (an ablation of
the winner: `--set g_width=64`); the changes are recorded as the rows' `changes` ("g_width=64").

Each finished cell becomes one row of rerun.parquet keyed by (trial_id, seed, fid_backbone,
fid_samples, max_kimg, a domain FID's classifier, a VAE's latent sampler, changes): the protocol and the
changes are part of the key, so runs under different protocols, or of a changed config, never mix with
the config's own, and a cell done with another domain classifier is run again beside it. The file is
rewritten atomically and only ever gains or updates rows. The FID reported as the result is the one of
the LAST checkpoint (`fid_final`, and `fid_ema_final` for the generator's EMA); `fid_best` (the best
evaluation, chosen on the test images) is kept for reference only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import fmt
from tuner.config.atomic import write_whole
from tuner.config import LATENT_SAMPLERS, ConfigError, TrainConfig

# python -m analysis.rerun --final: the protocol of Lucic et al. 2018 (10k generated vs 10k test
# images, Inception features), at 1000 kimg (~15.6k steps at batch 64), 3 seeds.
FINAL_PROTOCOL = {"max_kimg": 1000.0, "fid_backbone": "inception", "fid_samples": 10000, "seeds": 3}
KEY = ["trial_id", "seed", "fid_backbone", "fid_samples", "max_kimg", "domain_classifier_sha",  # domain FIDs only
       "latent_sampler",  # a VAE/AE's samples: prior (also every row written before it was recorded) | gmm
       "changes"]  # --set's changed fields, "g_width=64, lr=0.001"; "" (and every row written before it) for none
# --set FIELD=VALUE: the model and optimiser fields a re-run may change (the protocol has its own flags)
CHANGEABLE = ("arch", "z_dim", "g_width", "d_width", "d_norm", "loss", "optimizer", "lr", "lr_d_ratio", "beta1", "beta2",
              "n_critic", "clip_value", "gp_lambda", "batch_size", "kl_beta", "regularize", "dropout")
COLUMNS = KEY + ["fid_final", "fid_best", "fid_ema_final", "fid_ema_best", "g_ema", "kimg", "wall_time_s", "diverged",
                 "precision", "dataset", "family", "loss", "scored_checkpoint", "config", "finished_at"]
# set per run, not per config: these come from the run's own base config (tuner.study.driver.resolve_gpus)
# (the checkpoint schedule too: it changes no result, so a run may resume under another one)
RUNTIME_FIELDS = ("device", "gpu_memory_fraction", "cache_dir", "data_mirror", "checkpoint_every_kimg", "checkpoint_every_min")
EVALS_PER_RUN = 4  # default evaluations (= checkpoints) per run: at every quarter of the budget


@dataclasses.dataclass(frozen=True)
class Protocol:
    """What a final-evaluation row is measured with; rows of different protocols are never mixed."""

    max_kimg: float | None = None  # None: each trial's own value
    fid_backbone: str | None = None
    fid_samples: int | None = None
    eval_every_kimg: float | None = None  # None: max_kimg / EVALS_PER_RUN
    g_ema: float | None = None  # None: each trial's own; GAN trials only (the EMA draws no RNG: G trains the same)
    latent_sampler: str | None = None  # None: each trial's own; VAE/AE trials only (it changes the scored samples only)
    changes: tuple[tuple[str, Any], ...] = ()  # --set: (field, value) pairs in field order, CHANGEABLE fields only

    def __post_init__(self) -> None:
        from tuner.config import BACKBONES

        if self.max_kimg is not None and not (math.isfinite(self.max_kimg) and self.max_kimg > 0):
            raise ConfigError(f"invalid max_kimg={self.max_kimg!r}: allowed a finite number > 0")
        if self.fid_backbone is not None and self.fid_backbone not in BACKBONES:
            raise ConfigError(f"invalid fid_backbone={self.fid_backbone!r}: allowed one of {', '.join(BACKBONES)}")
        if self.fid_samples is not None and self.fid_samples < 2:
            raise ConfigError(f"invalid fid_samples={self.fid_samples!r}: allowed an integer >= 2")
        if self.g_ema is not None and not 0 <= self.g_ema < 1:
            raise ConfigError(f"invalid g_ema={self.g_ema!r}: allowed a number in [0, 1) (0 = off)")
        if self.latent_sampler is not None and self.latent_sampler not in LATENT_SAMPLERS:
            raise ConfigError(f"invalid latent_sampler={self.latent_sampler!r}: allowed one of {', '.join(LATENT_SAMPLERS)}")
        if self.eval_every_kimg is not None and not self.eval_every_kimg >= 0:
            raise ConfigError(f"invalid eval_every_kimg={self.eval_every_kimg!r}: allowed a number >= 0")
        for name, _ in self.changes:
            if name not in CHANGEABLE:
                raise ConfigError(f"invalid set {name}: allowed fields {', '.join(CHANGEABLE)}")

    def apply(self, cfg: TrainConfig, seed: int) -> TrainConfig:
        """The trial's config under this protocol: new seed, budget, metric; evaluations spread evenly
        over the budget (the study's ASHA rungs dropped)."""
        max_kimg = self.max_kimg if self.max_kimg is not None else cfg.max_kimg
        every = self.eval_every_kimg if self.eval_every_kimg is not None else max_kimg / EVALS_PER_RUN
        if self.changes:  # a changed config is validated as any other (ConfigError names the field)
            cfg = cfg.replace(**dict(self.changes))
        if self.g_ema is not None and cfg.family == "gan":
            cfg = cfg.replace(g_ema=self.g_ema)
        if self.latent_sampler is not None and cfg.family != "gan":
            cfg = cfg.replace(latent_sampler=self.latent_sampler)
        return cfg.replace(seed=seed, max_kimg=max_kimg, eval_every_kimg=min(every, max_kimg), eval_at_kimg=(),
                           fid_backbone=self.fid_backbone or cfg.fid_backbone,
                           fid_samples=self.fid_samples or cfg.fid_samples)


def parse_changes(items: list[str] | tuple[str, ...]) -> tuple[tuple[str, Any], ...]:
    """--set FIELD=VALUE flags -> Protocol.changes: each value typed as its TrainConfig field ("none" for an
    optional field's None); a field given twice keeps the last value. Raises ConfigError."""
    from tuner.config import coerce, field_types

    types, out = field_types(TrainConfig), {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in CHANGEABLE:
            raise ConfigError(f"invalid set {item!r}: allowed FIELD=VALUE with FIELD one of {', '.join(CHANGEABLE)}")
        kind, optional = types[name]
        text = text.strip()
        try:
            if optional and text.lower() == "none":
                value = None
            elif kind is bool:
                value = {"true": True, "1": True, "false": False, "0": False}[text.lower()]
            else:
                value = kind(text)
        except (KeyError, ValueError):
            allowed = {bool: "true or false", int: "an integer", float: "a number"}.get(kind, "a string")
            allowed += " or none" if optional else ""
            raise ConfigError(f"invalid set {name}={text!r}: allowed {allowed}") from None
        out[name] = coerce(TrainConfig, name, value)
    return tuple((k, out[k]) for k in CHANGEABLE if k in out)


def changes_label(changes: tuple[tuple[str, Any], ...]) -> str:
    """Protocol.changes as a row records it: "g_width=64, lr=0.001" ("" for none)."""
    return ", ".join(f"{k}={v}" for k, v in changes)


def top_trials(trials: pd.DataFrame, k: int) -> pd.DataFrame:
    """The k trials with the lowest finite best FID (diverged ones excluded), best first."""
    fid = pd.to_numeric(trials["fid_best"], errors="coerce")
    ok = trials[fid.notna() & fid.map(math.isfinite) & (trials["status"] != "diverged")]
    return ok.assign(fid_best=pd.to_numeric(ok["fid_best"])).sort_values("fid_best", kind="stable").head(k)


def config_of(row: dict[str, Any]):
    """The TrainConfig of a trials.parquet row (NaN -> None, numpy scalars -> Python)."""
    from tuner.config import TrainConfig

    values = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name not in row:
            continue
        v = row[f.name]
        if hasattr(v, "tolist") and getattr(v, "ndim", 0) > 0:  # a list column (eval_at_kimg) comes back as an array
            v = tuple(v.tolist())
        elif hasattr(v, "item") and not isinstance(v, (str, bytes)):
            v = v.item()
        if v is None or (isinstance(v, float) and math.isnan(v)):
            v = None
        values[f.name] = v
    # A column that is None for every trial may have come back as NaN in a float column: drop
    # optional fields that are None so their defaults apply.
    values = {k: v for k, v in values.items() if v is not None or TrainConfig.__dataclass_fields__[k].default is None}
    return TrainConfig.from_dict(values)


def plan(trials: pd.DataFrame, top: int, seeds: int, first_seed: int, protocol: Protocol) -> list[dict[str, Any]]:
    """The cells: [{trial_id, seed, config (TrainConfig)}], best config first."""
    best = top_trials(trials, top)
    if best.empty:
        raise ValueError("the study has no trial with a finite FID to re-run")
    cells = []
    for row in best.to_dict("records"):
        cfg = config_of(row)
        for seed in range(first_seed, first_seed + seeds):
            cells.append({"trial_id": str(row["trial_id"]), "seed": seed, "config": protocol.apply(cfg, seed).resolved(),
                          "changes": changes_label(protocol.changes)})
    return cells


def cell_params(cfg: TrainConfig) -> dict[str, Any]:
    """A cell of the grid: every TrainConfig field except the per-run ones (device, caches)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.to_dict().items() if k not in RUNTIME_FIELDS}


def row_classifier(row: dict[str, Any]) -> str | None:
    """The domain classifier (id) a row's FID was scored with: "unrecorded" for a domain row written
    before gentune recorded it, None for an Inception FID (no domain classifier touches it)."""
    if str(row.get("fid_backbone")) != "domain":
        return None
    sha = row.get("domain_classifier_sha")
    return sha if isinstance(sha, str) and sha else "unrecorded"


def row_sampler(row: dict[str, Any]) -> str:
    """A row's latent sampler: "prior" for GANs and for rows written before it was recorded (all prior)."""
    value = row.get("latent_sampler")
    return value if isinstance(value, str) and value else "prior"


def row_changes(row: dict[str, Any]) -> str:
    """A row's --set changes: "" for none, and for rows written before they were recorded (none)."""
    value = row.get("changes")
    return value if isinstance(value, str) else ""


def row_key(row: dict[str, Any]) -> tuple:
    return (str(row["trial_id"]), int(row["seed"]), str(row["fid_backbone"]), int(row["fid_samples"]), float(row["max_kimg"]),
            row_classifier(row), row_sampler(row), row_changes(row))


def cell_key(cell: dict[str, Any]) -> tuple:
    """A planned cell's key; its "classifier" is the domain classifier it will score with (`with_classifier_ids`)."""
    cfg = cell["config"]
    return (cell["trial_id"], cell["seed"], cfg.fid_backbone, cfg.fid_samples, float(cfg.max_kimg),
            cell.get("classifier") if cfg.fid_backbone == "domain" else None, cfg.latent_sampler, cell.get("changes", ""))


def with_classifier_ids(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cells, each domain-FID cell with the id of the classifier its run will load ("classifier"):
    the shipped one, a file, or this machine's trained one (trained here now if it is not cached yet,
    as the run would do first). Loaded once per (dataset, source, cache)."""
    from tuner.metrics.domain import load_classifier

    ids: dict[tuple, str] = {}
    out = []
    for c in cells:
        cfg = c["config"]
        if cfg.fid_backbone != "domain":
            out.append(c)
            continue
        where = (cfg.dataset, cfg.domain_classifier, cfg.cache_dir, cfg.data_mirror)
        if where not in ids:
            ids[where] = load_classifier(cfg.dataset, cfg.domain_classifier, cache_dir=cfg.cache_dir,
                                         mirror=cfg.data_mirror)[1]["id"]
        out.append({**c, "classifier": ids[where]})
    return out


def read_rows(path: Path) -> pd.DataFrame:
    """rerun.parquet, with the protocol columns (rows written before they existed get the study's values
    left empty: they never match a key, so they are not taken for a run of any protocol)."""
    if not path.is_file():
        return pd.DataFrame(columns=COLUMNS)
    rows = pd.read_parquet(path)
    for col in COLUMNS:
        if col not in rows:
            rows[col] = None
    return rows


def with_classifier(runs: pd.DataFrame) -> pd.DataFrame:
    """rerun rows with a `classifier` column, part of the protocol a table groups by: the domain
    classifier's checksum prefix for a domain FID (two classifiers' FIDs do not compare,
    tuner/results/exports.py:classifier_mix), "unrecorded" for a domain row written before gentune
    recorded it, and empty for an Inception FID, which no domain classifier touches."""
    recorded = runs["domain_classifier_sha"] if "domain_classifier_sha" in runs else pd.Series(None, index=runs.index, dtype=object)
    domain = runs["fid_backbone"] == "domain" if "fid_backbone" in runs else pd.Series(False, index=runs.index)
    recorded = recorded.astype(object).where(recorded.notna(), "unrecorded")  # (an all-missing column is float64)
    return runs.assign(classifier=recorded.where(domain, None))


def with_protocol_columns(runs: pd.DataFrame) -> pd.DataFrame:
    """rerun rows with every protocol column a table groups by filled: `classifier` (`with_classifier`),
    `latent_sampler` (`row_sampler`: "prior" where a row does not record one) and `changes` (`row_changes`)."""
    runs = with_classifier(runs)
    records = runs.to_dict("records")
    return runs.assign(latent_sampler=[row_sampler(r) for r in records],
                       changes=[row_changes(r) for r in records]) if len(runs) else runs


def protocol_groups(runs: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """rerun rows split by protocol (KEY's fid_backbone, fid_samples, max_kimg, a domain FID's classifier,
    a VAE's latent sampler, named when it is not the prior, and --set's changes, named when there are some),
    each with its description ("" when no row records one): summarised apart, never mixed."""
    runs = with_protocol_columns(runs)
    keys = [c for c in ("fid_backbone", "fid_samples", "max_kimg", "classifier", "latent_sampler", "changes") if c in runs]
    groups = []
    for key, part in runs.groupby(keys, dropna=False, sort=False):
        values = key if isinstance(key, tuple) else (key,)
        groups.append((", ".join(f"{k} {v}" for k, v in zip(keys, values)
                                 if not pd.isna(v) and (k, v) not in (("latent_sampler", "prior"), ("changes", ""))),
                       part))  # the prior, no changes: as ever
    return groups


def done_keys(rows: pd.DataFrame) -> dict[tuple, float]:
    """{key: g_ema of its row} of the rows that record their protocol."""
    keys = {}
    for r in rows.to_dict("records"):
        try:
            keys[row_key(r)] = float(r.get("g_ema") or 0.0)
        except (TypeError, ValueError):  # an old row without its protocol
            continue
    return keys


def is_done(cell: dict[str, Any], done: dict[tuple, float]) -> bool:
    """In rerun.parquet under the same key, with the EMA this cell asks for (if any)."""
    key = cell_key(cell)
    return key in done and (cell["config"].g_ema == 0 or done[key] == cell["config"].g_ema)


def merge_rows(path: Path, new: list[dict[str, Any]]) -> pd.DataFrame:
    """Add (or update, by key) rows and write the file atomically; it never loses a row."""
    old = read_rows(path)
    if not new:
        return old
    frame = pd.DataFrame(new)
    keys = {row_key(r) for r in new}
    keep = [i for i, r in enumerate(old.to_dict("records")) if not _matches(r, keys)]
    merged = pd.concat([old.iloc[keep], frame], ignore_index=True) if len(keep) else frame
    columns = COLUMNS + [c for c in merged.columns if c not in COLUMNS]
    merged = merged.reindex(columns=columns)
    assert len(merged) >= len(old), "rerun.parquet would shrink"
    write_whole(path, lambda tmp: merged.to_parquet(tmp, index=False))
    return merged


def _matches(row: dict[str, Any], keys: set[tuple]) -> bool:
    try:
        return row_key(row) in keys
    except (TypeError, ValueError):
        return False


def experiment_name(cells: list[dict[str, Any]]) -> str:
    """final-<backbone>-n<samples>-<kimg>kimg-<hash of the planned cells>: the same command maps to the
    same Tune experiment (and is restored), another plan to another one."""
    cfg = cells[0]["config"]
    digest = hashlib.sha1(json.dumps([[c["trial_id"], c["seed"], cell_params(c["config"])] for c in cells],
                                     sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"final-{cfg.fid_backbone}-n{cfg.fid_samples}-{cfg.max_kimg:g}kimg-{digest}"


def row_of(cell: dict[str, Any], metrics: pd.DataFrame) -> dict[str, Any] | None:
    """The rerun.parquet row of a finished cell (None when it did not reach its budget)."""
    from tuner.config.schema import evaluations

    cfg: TrainConfig = cell["config"]
    metrics = evaluations(metrics)  # checkpoints between evaluations are not results
    if metrics is None or metrics.empty or "fid" not in metrics:
        return None
    metrics = metrics.sort_values("kimg", kind="stable") if "kimg" in metrics else metrics
    last = metrics.iloc[-1].to_dict()
    diverged = bool(last.get("diverged") is True or last.get("diverged") == 1.0)
    if not diverged and float(last.get("kimg", 0)) < cfg.max_kimg - 1e-9:
        return None

    def finite(col: str) -> list[float]:
        if col not in metrics:
            return []
        values = pd.to_numeric(metrics[col], errors="coerce")
        return [float(v) for v in values if math.isfinite(v)]

    fids, emas = finite("fid"), finite("fid_ema")
    precision = metrics["precision"].dropna().iloc[-1] if "precision" in metrics and metrics["precision"].notna().any() else None
    return {
        "trial_id": cell["trial_id"], "seed": cell["seed"], "fid_backbone": cfg.fid_backbone,
        "fid_samples": cfg.fid_samples, "max_kimg": float(cfg.max_kimg),
        # the last checkpoint's FID is the result; the best is picked on the test set, reference only
        "fid_final": float("inf") if diverged else (fids[-1] if fids else math.nan),
        "fid_best": min(fids) if fids else math.nan,
        "fid_ema_final": (float("inf") if diverged else emas[-1]) if emas else math.nan,
        "fid_ema_best": min(emas) if emas else math.nan,
        "g_ema": float(cfg.g_ema), "kimg": float(last.get("kimg", math.nan)),
        "wall_time_s": float(last.get("time_s", math.nan)), "diverged": diverged, "precision": precision,
        "dataset": cfg.dataset, "family": cfg.family, "loss": cfg.loss, "scored_checkpoint": "last",
        "latent_sampler": cfg.latent_sampler, "changes": cell.get("changes", ""),
        "domain_classifier_sha": (metrics["domain_classifier_sha"].dropna().iloc[-1]  # the domain FID's classifier
                                  if "domain_classifier_sha" in metrics and metrics["domain_classifier_sha"].notna().any()
                                  else None),
        "config": json.dumps(cfg.to_dict(), default=list), "finished_at": time.time(),
    }


def run_final(exp_dir: str | Path, top: int, seeds: int, first_seed: int = 1, protocol: Protocol = Protocol(),
              out: str | Path | None = None, device: str | None = None, cpus_per_trial: float = 1.0,
              gpus_per_trial: float | None = None, address: str | None = None, max_failures: int = 3,
              max_concurrent: int = 0, checkpoint_every_kimg: float | None = None,
              checkpoint_every_min: float | None = None, log=print) -> pd.DataFrame:
    """Plan the cells, skip the done ones, run (or continue) the Tune experiment, merge its rows."""
    from tuner.config.search import SearchConfig
    from tuner.study.assembly import is_experiment, run_tune

    exp_dir = Path(exp_dir).expanduser().resolve()
    trials_file = exp_dir / "trials.parquet"
    if not trials_file.is_file():
        raise FileNotFoundError(f"{trials_file} does not exist: run the study (or `python -m tuner.results.exports {exp_dir}`) first")
    target = exp_dir / "rerun.parquet"
    storage = Path(out).expanduser().resolve() if out else exp_dir / "rerun"
    cells = plan(pd.read_parquet(trials_file), top, seeds, first_seed, protocol)
    if device:
        cells = [{**c, "config": c["config"].replace(device=device)} for c in cells]
    # the checkpoint schedule of this run (a runtime field): the flags, else TrainConfig's defaults,
    # never the study's (its trials checkpointed at rungs of another budget)
    schedule = {"checkpoint_every_kimg": TrainConfig.checkpoint_every_kimg if checkpoint_every_kimg is None else checkpoint_every_kimg,
                "checkpoint_every_min": TrainConfig.checkpoint_every_min if checkpoint_every_min is None else checkpoint_every_min}
    cells = with_classifier_ids([{**c, "config": c["config"].replace(**schedule)} for c in cells])
    name = experiment_name(cells)
    done = done_keys(read_rows(target))
    todo = [c for c in cells if not is_done(c, done)]
    log(f"final evaluation {name}: {len(cells)} runs planned, {len(cells) - len(todo)} already in {target.name}")
    if not todo:
        return read_rows(target)

    base = todo[0]["config"]
    search = SearchConfig(cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, address=address,
                          max_failures=max_failures, max_concurrent=max_concurrent, storage_path=str(storage), name=name)
    path = str(storage / name)
    restore = is_experiment(path)
    if restore:
        from tuner.study.resume import check_restorable

        check_restorable(Path(path), searched=False)  # the study's repairs of a driver killed mid-snapshot
        log(f"continuing the interrupted run {path}")
    from tuner.metrics.metrics_cache import prepare_assets

    assets = prepare_assets(base)  # real statistics of the protocol (cached per dataset, split, backbone, n)

    def new_tuner(search, base, trainable, run_config):
        from ray import tune
        from ray.tune.schedulers import FIFOScheduler

        tune_config = tune.TuneConfig(scheduler=FIFOScheduler(), num_samples=1,
                                      max_concurrent_trials=search.max_concurrent or None,
                                      reuse_actors=search.reuse_actors)  # as a study's trials: seeded per run
        space = {"cell": tune.grid_search([cell_params(c["config"]) for c in todo])}
        return tune.Tuner(trainable, param_space=space, tune_config=tune_config, run_config=run_config)

    # the study's own assembly: storage check, atomic snapshot uploads, token auth, full-disk and restore guards
    grid, _, _ = run_tune(search, base, assets, restore=restore, build=new_tuner, keep_best_fid=False)

    rows, missing = finished_rows(grid, cells, log)
    merged = merge_rows(target, rows)
    if missing:
        log(f"{missing} run(s) did not finish: run the same command again to continue them")
    return merged


def finished_rows(grid, cells: list[dict[str, Any]], log=print) -> tuple[list[dict[str, Any]], int]:
    """The rerun.parquet rows of a Tune run's finished cells, and how many cells did not finish. A cell
    that never started (a run interrupted with Ctrl-C while it was pending) has no config in its result."""
    by_params = {json.dumps(cell_params(c["config"]), sort_keys=True, default=str): c for c in cells}
    rows, missing = [], 0
    for result in grid:
        cell = by_params.get(json.dumps((result.config or {}).get("cell"), sort_keys=True, default=str))
        row = row_of(cell, result.metrics_dataframe) if cell is not None and result.error is None else None
        if row is None:
            missing += 1
            continue
        rows.append(row)
        ema = f", EMA {row['fid_ema_final']:.2f}" if math.isfinite(row["fid_ema_final"]) else ""
        log(f"  {row['trial_id']} seed {row['seed']}: FID {row['fid_final']:.2f} (last checkpoint{ema})")
    return rows, missing


# ------------------------------------------------------------------------------------------
# command line (python -m analysis.rerun): the flags, and --final's expansion


def add_arguments(p) -> None:
    """The final evaluation's flags (analysis/rerun.py's parser gains these)."""
    import argparse

    from tuner.config import BACKBONES

    g = p.add_argument_group("protocol (default: each trial's own values)")
    g.add_argument("--final", action="store_true",
                   help="the literature's protocol: --max-kimg 1000 --fid-backbone inception --fid-samples 10000 "
                        "--seeds 3 (flags given alongside override it)")
    g.add_argument("--max-kimg", type=float, default=None, help="training budget of every run, in kimg")
    g.add_argument("--fid-backbone", default=None, choices=BACKBONES, help="FID feature network")
    g.add_argument("--fid-samples", type=int, default=None, help="generated samples per FID (vs as many test images)")
    g.add_argument("--g-ema", type=float, default=None,
                   help="score an EMA of the generator too, with this decay (GAN runs; e.g. 0.999) [each trial's own]")
    g.add_argument("--latent-sampler", default=None, choices=LATENT_SAMPLERS,
                   help="where a VAE/AE's scored samples come from: prior (N(0, I)) | gmm (an ex-post Gaussian mixture "
                        "of its codes, Ghosh et al. 2020) [each trial's own]")
    g.add_argument("--set", dest="changes", action="append", default=[], metavar="FIELD=VALUE",
                   help=f"re-train with this field changed (repeatable; an ablation of the winner, e.g. g_width=64); "
                        f"FIELD one of {', '.join(CHANGEABLE)}; rows record it as `changes` and never mix with the "
                        "config's own")
    g.add_argument("--eval-every-kimg", type=float, default=None,
                   help=f"evaluate and checkpoint every this many kimg [max_kimg / {EVALS_PER_RUN}]; the last is scored")
    c = p.add_argument_group("checkpoints (no evaluation; resume from the last one after a kill)")
    c.add_argument("--checkpoint-every-kimg", type=float, default=None,
                   help="also checkpoint every this many kimg between evaluations; 0 = off [0]")
    c.add_argument("--checkpoint-every-min", type=float, default=None,
                   help="also checkpoint after this many minutes of a run's time since its last checkpoint; 0 = off [2]")
    r = p.add_argument_group("resources (as tuner/search.py)")
    r.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per run [1]")
    r.add_argument("--gpus-per-trial", type=float, default=None, help="GPU share per run [1 if there is a GPU, else 0]")
    r.add_argument("--address", default=None, help="Ray cluster to join ('auto' on a head node) [a local Ray]")
    r.add_argument("--max-failures", type=int, default=3, help="retries of a run from its last checkpoint [3]")
    r.add_argument("--max-concurrent", type=int, default=0, help="runs at once (0 = as resources allow) [0]")
    del argparse


def resolve(args) -> dict[str, Any]:
    """Namespace -> the run's settings, --final expanded (explicit flags win). Raises ConfigError."""
    given = {k: getattr(args, k) for k in ("max_kimg", "fid_backbone", "fid_samples", "seeds") if getattr(args, k) is not None}
    values = {**(FINAL_PROTOCOL if args.final else {}), **given}
    seeds = values.get("seeds", 3)
    if args.top < 1:
        raise ConfigError(f"invalid top={args.top!r}: allowed an integer >= 1")
    if seeds < 1:
        raise ConfigError(f"invalid seeds={seeds!r}: allowed an integer >= 1")
    if args.cpus_per_trial <= 0:
        raise ConfigError(f"invalid cpus_per_trial={args.cpus_per_trial!r}: allowed a number > 0")
    if args.gpus_per_trial is not None and not 0 <= args.gpus_per_trial <= 1:
        raise ConfigError(f"invalid gpus_per_trial={args.gpus_per_trial!r}: allowed a fraction in [0, 1]")
    if args.max_failures < 0 or args.max_concurrent < 0:
        raise ConfigError("invalid max_failures/max_concurrent: allowed integers >= 0")
    for name in ("checkpoint_every_kimg", "checkpoint_every_min"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"invalid {name}={value!r}: allowed a finite number >= 0 (0 = off)")
    protocol = Protocol(max_kimg=values.get("max_kimg"), fid_backbone=values.get("fid_backbone"),
                        fid_samples=values.get("fid_samples"), eval_every_kimg=args.eval_every_kimg, g_ema=args.g_ema,
                        latent_sampler=args.latent_sampler, changes=parse_changes(args.changes))
    return {"top": args.top, "seeds": seeds, "first_seed": args.first_seed, "protocol": protocol, "out": args.out,
            "device": args.device, "cpus_per_trial": args.cpus_per_trial, "gpus_per_trial": args.gpus_per_trial,
            "address": args.address, "max_failures": args.max_failures, "max_concurrent": args.max_concurrent,
            "checkpoint_every_kimg": args.checkpoint_every_kimg, "checkpoint_every_min": args.checkpoint_every_min}


def rerun_summary(trials: pd.DataFrame, runs: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Mean +- std of the re-runs' FIDs per config, the original FID, and both rankings.

    Rankings are by best FID: the original trial's fid_best, and the mean fid_best of its re-runs.
    """
    runs = runs.copy()
    for col in ("fid_best", "fid_final"):
        runs[col] = pd.to_numeric(runs[col], errors="coerce")
    g = runs.groupby("trial_id")
    summary = pd.DataFrame({
        "seeds": g.size(),
        "mean_fid_best": g["fid_best"].mean(),
        "std_fid_best": g["fid_best"].std(),
        "mean_fid_final": g["fid_final"].mean(),
        "std_fid_final": g["fid_final"].std(),
        "diverged": g["diverged"].sum() if "diverged" in runs else 0,
    }).reset_index()
    info = trials.set_index("trial_id")
    summary["original_fid_best"] = summary["trial_id"].map(info["fid_best"])
    summary["label"] = summary["trial_id"].map(info["label"]) if "label" in info else summary["trial_id"]
    summary = summary.sort_values("original_fid_best", kind="stable").reset_index(drop=True)
    summary["original_rank"] = range(1, len(summary) + 1)
    summary["rerun_rank"] = summary["mean_fid_best"].rank(method="min").astype("Int64")
    rows = [{
        "config": r["label"],
        "trial": f"`{r['trial_id']}`",
        "original best FID": fmt.fid(r["original_fid_best"]),
        "seeds": fmt.count(r["seeds"]),
        "re-run best FID (mean ± std)": f"{fmt.fid(r['mean_fid_best'])} ± {fmt.fid(r['std_fid_best'])}",
        "re-run final FID (mean ± std)": f"{fmt.fid(r['mean_fid_final'])} ± {fmt.fid(r['std_fid_final'])}",
        "original rank": fmt.count(r["original_rank"]),
        "re-run rank": fmt.count(r["rerun_rank"]),
    } for r in summary.to_dict("records")]
    lines = [fmt.table(rows), ""]
    if len(summary) < 2:
        lines.append("Ranking: not enough data: one config only.")
    else:
        same = list(summary["original_rank"]) == list(summary["rerun_rank"])
        top_holds = summary.loc[summary["rerun_rank"] == 1, "original_rank"].tolist() == [1]
        if same:
            text = "holds exactly"
        else:
            text = "keeps its winner but reorders the rest" if top_holds else "does not hold: the winner changes"
        rho = None
        if len(summary) >= 3 and summary["mean_fid_best"].notna().all():
            from scipy.stats import spearmanr

            rho = float(spearmanr(summary["original_fid_best"], summary["mean_fid_best"]).statistic)
        corr = f" (Spearman rank correlation {rho:.2f} over {len(summary)} configs)" if rho is not None and math.isfinite(rho) else ""
        lines.append(f"Ranking by best FID: the original ranking {text}{corr}.")
    lines.append("")
    lines.append("_Method:_ each config retrained from scratch at its full budget with new seeds; std is the sample "
                 "standard deviation over seeds (n/a with one seed). Original FIDs were seed "
                 f"{', '.join(sorted({fmt.param(s) for s in trials.loc[trials['trial_id'].isin(summary['trial_id']), 'seed']}))}.")
    return summary, "\n".join(lines)
