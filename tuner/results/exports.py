"""Exports of an experiment: trials.csv / trials.parquet, history.parquet and best.json.

They are rebuilt from Ray Tune's own records (ExperimentAnalysis reads each trial's result.json),
so they can be written at the end, on resume, or for a study that is still running
(`python -m tuner.results.exports EXPERIMENT_DIR`).

trials: one row per trial: trial_id, status (completed / pruned / diverged / errored / running /
pending), every TrainConfig field of the trial's full config, fid_final, fid_best, kimg (reached),
wall_time_s, diverge_reason, error (path of Ray's error.txt), the final value of every other metric
(prefixed final_ where its name is also a config field: the VAE metric `loss` is `final_loss`),
trial_dir and samples_dir (relative to the experiment folder).
history: one row per evaluation of every trial (trial_id + every metric the trainer reported);
checkpoints between evaluations (results with checkpoint_only, tuner/config/schema.py) are left out.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from tuner.config.atomic import write_whole
from tuner.config.cli import ArgumentParser
from tuner.config import ConfigError, TrainConfig, trial_config
from tuner.config.schema import CHECKPOINT_KIMG, METRIC, MODE, STATUSES, evaluations, is_checkpoint_only

RAY_COLUMNS = {
    "timestamp", "checkpoint_dir_name", "done", "training_iteration", "trial_id", "date", "time_this_iter_s",
    "time_total_s", "pid", "hostname", "node_ip", "time_since_restore", "iterations_since_restore", "config",
    "should_checkpoint",
}


# Ray's ids are hex: "3e256774" reads as the number 3e256774 (inf) and "00012345" as 12345 unless
# pandas is told they are text.
TEXT_COLUMNS = {"trial_id": str, "node_id": str}


def read_trials_csv(path: str | Path) -> pd.DataFrame:
    """trials.csv as written by write_exports, with the id columns kept as text."""
    return pd.read_csv(path, dtype=TEXT_COLUMNS)


def load_search_config(exp: Path) -> dict[str, Any]:
    return json.loads((exp / "search_config.json").read_text())


def trial_status(ray_status: str, last: dict[str, Any], max_kimg: float) -> str:
    if ray_status == "ERROR":
        return "errored"
    if last.get("diverged"):
        return "diverged"
    if ray_status in ("RUNNING", "PAUSED"):
        return "running"
    if ray_status == "PENDING" or not last:
        return "pending"
    return "completed" if last.get("kimg", 0.0) >= max_kimg - 1e-9 else "pruned"


def history_frame(trial_id: str, df: pd.DataFrame) -> pd.DataFrame:
    df = evaluations(df)  # checkpoints between evaluations are not results
    if df.empty or "kimg" not in df:
        return pd.DataFrame()
    keep = [c for c in df.columns if c not in RAY_COLUMNS and not c.startswith("config/")]
    out = df[keep].copy()
    out.insert(0, "trial_id", trial_id)
    if "time_total_s" in df:
        out["wall_time_s"] = df["time_total_s"].values
    # After a resume, evaluations after the restored checkpoint are reported again: keep the last.
    return out.drop_duplicates(subset=["kimg"], keep="last").sort_values("kimg").reset_index(drop=True)


def build_frames(exp: str | Path) -> dict[str, Any]:
    from ray import tune

    exp = Path(exp)
    saved = load_search_config(exp)
    base, max_kimg = saved["base"], saved["base"]["max_kimg"]

    analysis = tune.ExperimentAnalysis(str(exp))
    rows, histories = [], []
    for trial in analysis.trials:
        hist = history_frame(trial.trial_id, analysis.trial_dataframes.get(trial.trial_id, pd.DataFrame()))
        last = dict(trial.last_result or {})
        if is_checkpoint_only(last):  # a running trial between evaluations: how far it got, no result
            last = {"kimg": last.get(CHECKPOINT_KIMG, 0.0), "time_total_s": last.get("time_total_s", math.nan)}
        cfg = trial_config(base, trial.config)
        finite = hist["fid"][hist["fid"].apply(lambda v: math.isfinite(v))] if not hist.empty else pd.Series(dtype=float)
        trial_dir = Path(trial.path).name if trial.path else ""
        row: dict[str, Any] = {"trial_id": trial.trial_id, "status": trial_status(trial.status, last, max_kimg)}
        row.update(cfg.to_dict())
        row.update({
            "fid_final": float(finite.iloc[-1]) if len(finite) else math.nan,
            "fid_best": float(finite.min()) if len(finite) else math.nan,
            "kimg": float(last.get("kimg", 0.0)),
            "wall_time_s": float(last.get("time_total_s", math.nan)),
            "diverge_reason": last.get("diverge_reason", "") or "",
            # Ray writes error.txt into an errored trial's folder (read from storage: no Ray needed)
            "error": f"{Path(trial.path).name}/error.txt" if trial.path and (Path(trial.path) / "error.txt").is_file() else "",
        })
        if not hist.empty:
            final = hist.iloc[-1]
            for key in hist.columns:
                if key in ("trial_id", "fid", "diverged", "diverge_reason", "kimg", "wall_time_s"):
                    continue
                column = f"final_{key}" if key in row else key  # e.g. the VAE metric `loss` vs the config field
                value = final[key]
                if isinstance(value, (list, tuple)) or (hasattr(value, "tolist") and not pd.api.types.is_scalar(value)):
                    value = json.dumps(list(value))
                row[column] = value
        row["trial_dir"] = trial_dir
        row["samples_dir"] = f"{trial_dir}/samples" if trial_dir else ""
        rows.append(row)
        if not hist.empty:
            histories.append(hist)
    trials = pd.DataFrame(rows)
    history = pd.concat(histories, ignore_index=True) if histories else pd.DataFrame(columns=["trial_id", "kimg", "fid"])
    best = best_record(trials, exp, analysis)
    return {"trials": trials, "history": history, "best": best, "fid_floor": saved.get("fid_floor")}


def best_record(trials: pd.DataFrame, exp: Path, analysis) -> dict[str, Any] | None:
    if trials.empty or trials["fid_best"].isna().all():
        return None
    row = trials.loc[trials["fid_best"].idxmin()]
    trial = next(t for t in analysis.trials if t.trial_id == row["trial_id"])
    checkpoint = None
    try:
        ckpt = analysis.get_best_checkpoint(trial, metric=METRIC, mode=MODE)
        checkpoint = ckpt.path if ckpt is not None else None
    except Exception:  # no checkpoint kept (e.g. a trial that diverged before its first evaluation)
        checkpoint = None
    config = {k: _plain(row[k]) for k in TrainConfig.__dataclass_fields__}
    metrics = {k: _plain(row[k]) for k in ("fid_best", "fid_final", "kimg", "wall_time_s", "status")}
    return {"trial_id": row["trial_id"], "config": config, "metrics": metrics, "checkpoint": checkpoint,
            "samples_dir": str(exp / row["samples_dir"])}


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


class ExportShrinks(ConfigError):
    """The new exports would drop trials that the existing ones hold."""


def existing_trial_ids(exp: Path) -> tuple[set[str], str | None]:
    """Trial ids held by the current trials.csv / trials.parquet (the union), and the file holding most.

    A file that cannot be read holds nothing worth keeping: it is replaced."""
    ids: set[str] = set()
    largest, largest_n = None, -1
    for name, read in (("trials.csv", read_trials_csv), ("trials.parquet", pd.read_parquet)):
        path = exp / name
        if not path.is_file():
            continue
        try:
            held = set(read(path)["trial_id"].astype(str))
        except Exception:  # noqa: BLE001 (empty, truncated, or not ours)
            continue
        ids |= held
        if len(held) > largest_n:
            largest, largest_n = name, len(held)
    return ids, largest


def write_exports(exp: str | Path, allow_shrink: bool = False) -> dict[str, Any]:
    """Write trials.csv, trials.parquet, history.parquet and best.json atomically; return the frames.

    Refused (ExportShrinks, nothing written) when the existing trials.csv/.parquet hold trials the
    new export lacks, unless allow_shrink: a study restarted by mistake must not overwrite the old one.
    """
    exp = Path(exp)
    frames = build_frames(exp)
    new_ids = set(frames["trials"]["trial_id"].astype(str)) if not frames["trials"].empty else set()
    old_ids, holder = existing_trial_ids(exp)
    missing = old_ids - new_ids
    if missing and not allow_shrink:
        shown = ", ".join(sorted(missing)[:5]) + (", ..." if len(missing) > 5 else "")
        raise ExportShrinks(
            f"refusing to overwrite {exp / holder}: it holds {len(old_ids)} trials, the new export "
            f"{len(new_ids)}, and lacks {len(missing)} of them ({shown}); the files are unchanged; "
            "pass --allow-shrink to replace them anyway")
    write_whole(exp / "trials.csv", lambda p: frames["trials"].to_csv(p, index=False))
    write_whole(exp / "trials.parquet", lambda p: frames["trials"].to_parquet(p, index=False))
    write_whole(exp / "history.parquet", lambda p: frames["history"].to_parquet(p, index=False))
    write_whole(exp / "best.json", lambda p: Path(p).write_text(json.dumps(frames["best"], indent=2)))
    return frames


def summarize(frames: dict[str, Any], exp: str | Path) -> str:
    trials, best = frames["trials"], frames["best"]
    counts = trials["status"].value_counts().to_dict() if not trials.empty else {}
    lines = ["", "== gentune study summary ==",
             "trials: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES if counts.get(s))]
    if best is None:
        lines.append("no trial reached an evaluation")
    else:
        cfg = best["config"]
        searched = {k: cfg[k] for k in ("family", "arch", "loss", "z_dim", "lr", "lr_d_ratio", "beta1", "beta2", "n_critic",
                                         "clip_value", "gp_lambda", "batch_size", "g_width", "d_width", "d_norm", "kl_beta",
                                         "regularize", "latent_sampler") if cfg.get(k) is not None
                    and not (cfg.get("family") != "gan" and k in ("lr_d_ratio", "d_norm"))
                    and not (cfg.get("family") == "gan" and k in ("kl_beta", "regularize", "latent_sampler"))}
        lines += [
            f"best trial: {best['trial_id']}  fid[{cfg['fid_backbone']}, {cfg['fid_samples']} samples] "
            f"{best['metrics']['fid_best']:.3f} at {best['metrics']['kimg']:.1f} kimg ({best['metrics']['status']})"
            + floor_note(frames.get("fid_floor"), cfg),
            "best config: " + json.dumps(searched),
            f"checkpoint: {best['checkpoint']}",
            f"samples: {best['samples_dir']}",
        ]
    mix = classifier_mix(frames.get("history"), "this study")
    if mix:
        lines.append(f"WARNING: {mix} ({CLASSIFIER_COLUMN} in history.parquet)")
    where = str(exp).rstrip("/") + "/trials.csv" if "://" in str(exp) else Path(exp) / "trials.csv"  # (Path mangles s3://)
    lines.append(f"results: {where}, history.parquet, best.json, optuna.journal")
    return "\n".join(lines)


CLASSIFIER_COLUMN = "domain_classifier_sha"  # each evaluation's domain classifier (tuner/training/evaluate.py)


def classifier_mix(history: pd.DataFrame, where: str = "these records") -> str | None:
    """One line when the domain FIDs of `history` come from more than one domain classifier (their
    numbers do not compare), else None. Records made before gentune recorded the classifier count as
    one more ("unrecorded"): those classifiers were trained on each machine."""
    if history is None or history.empty or "fid_backbone" not in history:
        return None
    rows = history[history["fid_backbone"] == "domain"]
    if rows.empty:
        return None
    ids = rows[CLASSIFIER_COLUMN].fillna("unrecorded") if CLASSIFIER_COLUMN in rows else pd.Series("unrecorded", index=rows.index)
    found = sorted(set(ids.astype(str)))
    if len(found) < 2:
        return None
    return (f"{where} scored the domain FID with {len(found)} different domain classifiers ({', '.join(found)}): "
            f"their FIDs do not compare; report each classifier's experiments separately")


def floor_note(floor: dict[str, Any] | None, cfg: dict[str, Any]) -> str:
    """'; real-vs-real floor 6.30' when the study recorded the floor of this very FID setup."""
    if not floor or (floor.get("fid_backbone"), floor.get("fid_samples")) != (cfg["fid_backbone"], cfg["fid_samples"]):
        return ""
    return f"; real-vs-real floor {floor['fid']:.2f} ({floor['dataset']} train vs test)"


def parser():
    import argparse

    p = ArgumentParser(prog="python -m tuner.results.exports",
                       description="Rebuild trials.csv/.parquet, history.parquet and best.json of an experiment folder.")
    p.add_argument("experiment_dir", metavar="EXPERIMENT_DIR", help="the folder STORAGE_PATH/NAME of a gentune study")
    p.add_argument("--allow-shrink", action="store_true", default=argparse.SUPPRESS,
                   help="replace trials.csv/.parquet even when they hold trials the new export lacks")
    return p


EXPORT_FILES = ["trials.csv", "trials.parquet", "history.parquet", "best.json"]


def relocate_best(local: Path, uri: str, frames: dict[str, Any]) -> None:
    """best.json (and frames["best"]) of exports written in `local`, a copy of the experiment at `uri`
    (remote storage): its checkpoint and samples paths rewritten to point into `uri`."""
    best = frames.get("best")
    if not best:
        return
    for key in ("checkpoint", "samples_dir"):
        value = best.get(key)
        if isinstance(value, str) and value.startswith(str(local)):
            best[key] = uri.rstrip("/") + value[len(str(local)):]
    write_whole(local / "best.json", lambda p: Path(p).write_text(json.dumps(best, indent=2)))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if "://" in args.experiment_dir:
        return main_remote(args)
    exp = Path(args.experiment_dir)
    try:
        if not (exp / "search_config.json").is_file():
            raise ConfigError(f"invalid EXPERIMENT_DIR={str(exp)!r}: allowed a gentune experiment folder "
                              "(one with search_config.json)")
        frames = write_exports(exp, allow_shrink=getattr(args, "allow_shrink", False))
    except ConfigError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(summarize(frames, exp))
    return 0


def main_remote(args) -> int:
    """An experiment folder in remote storage (s3://...): exported from a local copy without the
    checkpoints, and the exports uploaded beside the experiment (each one object, replaced whole)."""
    import tempfile

    from tuner.study.remote import check_remote_storage, local_copy, write_remote

    uri = args.experiment_dir.rstrip("/")
    try:
        check_remote_storage(uri, field="EXPERIMENT_DIR")
        with tempfile.TemporaryDirectory(prefix="gentune-exports-") as tmp:
            exp = local_copy(uri, Path(tmp) / uri.rsplit("/", 1)[-1])
            if not (exp / "search_config.json").is_file():
                raise ConfigError(f"invalid EXPERIMENT_DIR={uri!r}: allowed a gentune experiment folder "
                                  "(one with search_config.json)")
            frames = write_exports(exp, allow_shrink=getattr(args, "allow_shrink", False))
            relocate_best(exp, uri, frames)
            for name in EXPORT_FILES:
                if (exp / name).is_file():
                    write_remote(f"{uri}/{name}", (exp / name).read_bytes())
    except ConfigError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(summarize(frames, uri))
    return 0


if __name__ == "__main__":
    sys.exit(main())
