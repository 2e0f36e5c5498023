"""Population-based training (`--scheduler pbt`): Ray Tune's PopulationBasedTraining over the
optimiser settings, on gentune's own trial checkpoints.

- The population: Optuna proposes it. Before Tune starts, the driver asks the study's sampler (the
  same define-by-run space, warm-start points first) for --num-samples configs and records them in
  the study's journal (user attribute `pbt_member`). PBT does not accept a searcher beside it (Ray
  refuses any SearchGenerator with PBT), so the configs are handed to Tune as fixed points. When the
  study ends, each Optuna trial is told what its member reached (`tell_population`): its params are
  the member's initial ones, its value the member's final FID after its schedule.
- Every `perturbation_kimg` (an evaluation point), PBT ranks the running members by FID. A member
  in the bottom quarter takes the latest checkpoint of one in the top quarter (exploit) and
  continues with that member's optimiser settings perturbed (explore: each of PBT_FIELDS times 0.8
  or 1.2, or redrawn from its range with probability 1/4, then clipped into its range).
- The worker applies the new settings to the restored optimisers (tuner/training/checkpoint.py:load_checkpoint
  with `adopt`), and reports the settings in force with every evaluation (the `hp_*` metrics), so each
  trial's history shows its schedule; the first evaluation after an exploit says whose checkpoint it
  continued (`cloned_from`).
- The driver prints one line per exploit and appends it to EXPERIMENT/pbt_exploits.jsonl (each
  write whole), which analysis/report.py reads.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any



# What PBT mutates: the optimiser settings, which a running trial can change without rebuilding a net.
PBT_FIELDS = ("lr", "lr_d_ratio", "beta1", "beta2")
EXPLOITS_FILE = "pbt_exploits.jsonl"
PBT_LOGGER = "ray.tune.schedulers.pbt"


def mutated_fields(family: str) -> tuple[str, ...]:
    """The PBT fields of a family's trials: a VAE or AE has one learning rate, and its space searches no
    betas (PBT would otherwise draw them at random for every member instead of Adam's defaults)."""
    return PBT_FIELDS if family == "gan" else ("lr",)


def bounds(ranges: dict[str, Any], family: str) -> dict[str, tuple[float, float, bool]]:
    """(low, high, log) of each mutated field, from the study's search space; betas without a range in
    the space (the autoencoders') keep Adam's usual neighbourhood."""
    fallback = {"beta1": (0.0, 0.95, False), "beta2": (0.9, 0.9999, False), "lr_d_ratio": (0.25, 4.0, True)}
    out = {}
    for name in mutated_fields(family):
        rng = ranges.get(name)
        out[name] = (float(rng.low), float(rng.high), bool(rng.log)) if rng is not None and rng.kind == "float" else fallback[name]
    return out


def mutations(bounds_: dict[str, tuple[float, float, bool]]) -> dict[str, Any]:
    """PBT's hyperparam_mutations: where a resample draws each field from."""
    from ray import tune

    return {name: (tune.loguniform(low, high) if log else tune.uniform(low, high))
            for name, (low, high, log) in bounds_.items()}


class ClipToRanges:
    """PBT's custom_explore_fn: a perturbed value (x0.8, x1.2) is clipped into its field's range, so
    that a beta never reaches 1 and a learning rate stays where the space allows it. beta2 is perturbed
    on 1 - beta2 (Adam's averaging horizon) instead: 0.999 x 1.2 is not a beta."""

    def __init__(self, bounds_: dict[str, tuple[float, float, bool]]):
        self.bounds = dict(bounds_)

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        for name, (low, high, _log) in self.bounds.items():
            value = config.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                config[name] = float(min(high, max(low, value)))
        return config


def explore_beta2(old: float, new: float, low: float, high: float) -> float:
    """PBT multiplied beta2 by f (new = old * f): apply f to 1 - beta2 instead (f > 1 shortens
    Adam's second-moment horizon, as a larger learning rate would), clipped into [low, high]."""
    if old <= 0:
        return min(high, max(low, new))
    factor = new / old
    return float(min(high, max(low, 1 - (1 - old) * factor)))


def _plain(value: Any) -> Any:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def change_words(old: dict[str, Any], new: dict[str, Any], fields: tuple[str, ...]) -> str:
    """'lr 3e-4 → 4e-4, beta1 0.5 → 0.4' for the fields that changed (or 'same settings')."""
    parts = []
    for name in fields:
        a, b = old.get(name), new.get(name)
        if a is None or b is None or a == b:
            continue
        parts.append(f"{name} {a:.3g} → {b:.3g}")
    return ", ".join(parts) or "same settings"


def record_exploit(experiment_dir: str | None, event: dict[str, Any]) -> None:
    """Append one exploit to EXPERIMENT/pbt_exploits.jsonl, rewriting the file whole (a kill mid-write
    leaves the previous file)."""
    if not experiment_dir or "://" in experiment_dir:
        return
    from tuner.config.atomic import write_whole

    path = Path(experiment_dir) / EXPLOITS_FILE
    text = path.read_text() if path.is_file() else ""
    if text and not text.endswith("\n"):
        text += "\n"
    text += json.dumps(event) + "\n"
    write_whole(path, lambda tmp: Path(tmp).write_text(text))


def read_exploits(exp: str | Path) -> list[dict[str, Any]]:
    """The exploits of a study, in order (unreadable lines skipped); [] for a study without PBT.

    A study resumed after its driver was killed redoes the exploits made after Tune's last snapshot:
    one exploit per trial and perturbation point (kimg) is kept, the last one made."""
    path = Path(exp) / EXPLOITS_FILE
    if not path.is_file():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    last = {(e.get("trial_id"), e.get("kimg")): i for i, e in enumerate(events)}
    return [e for i, e in enumerate(events) if last[(e.get("trial_id"), e.get("kimg"))] == i]


def perturbation_kimg(search, base) -> float:
    """--perturbation-kimg, or by default an eighth of the budget (at least one evaluation apart)."""
    if search.perturbation_kimg is not None:
        return float(search.perturbation_kimg)
    return default_perturbation_kimg(base.max_kimg)


def default_perturbation_kimg(max_kimg: float) -> float:
    return max_kimg / 8


def perturbation_points(search, base) -> list[float]:
    """The evaluation points PBT decides at: every perturbation_kimg up to max_kimg."""
    every = perturbation_kimg(search, base)
    count = int(math.floor(base.max_kimg / every + 1e-9))
    return [round(every * k, 6) for k in range(1, count + 1) if every * k < base.max_kimg - 1e-9]


def initial_population(search, journal: str, sampler, space, points) -> list[dict[str, Any]]:
    """Ask the Optuna study for the population (warm-start points first); each member's params become
    one Tune trial's config. Recorded in the journal with the user attribute pbt_member."""
    import optuna

    from tuner.study.optuna_bridge import make_storage

    study = optuna.create_study(study_name=search.name, storage=make_storage(journal), sampler=sampler,
                                direction="minimize", load_if_exists=True)
    for point in points or []:
        study.enqueue_trial(point)
    population = []
    import warnings

    for member in range(search.num_samples):
        with warnings.catch_warnings():  # warm-start values outside a narrowed range (tuner/config/space.py)
            warnings.filterwarnings("ignore", message=r"Fixed parameter .* is out of range", category=UserWarning)
            trial = study.ask()
            constants = space(trial)
        trial.set_user_attr("pbt_member", member)
        population.append({**trial.params, **(constants or {})})
    return population


MEMBER_SUFFIX = re.compile(r"_(\d{5})$")


def member_index(trial_id: str) -> int | None:
    """The population member of a Ray trial: Tune numbers the trials it creates from the population
    in order (trial ids end in _00000, _00001, ...)."""
    match = MEMBER_SUFFIX.search(trial_id)
    return int(match.group(1)) if match else None


def tell_population(search, journal: str, grid, max_kimg: float) -> None:
    """At the end: tell each member's Optuna trial what the member reached (its last FID at max_kimg,
    COMPLETE; diverged or errored, FAIL; stopped before max_kimg, PRUNED), with its schedule's last
    settings and the exploits it made as user attributes."""
    from optuna.trial import TrialState

    from tuner.study.optuna_bridge import load_journal_study

    study = load_journal_study(journal, search.name)
    by_member = {t.user_attrs.get("pbt_member"): t for t in study.get_trials(deepcopy=False)}
    exploits = read_exploits(search.experiment_dir) if "://" not in search.experiment_dir else []
    for result in grid:
        # (not result.metrics["trial_id"]: a trial's last result may be the one its exploit took over)
        trial_id = folder_trial_id(Path(result.path or "").name)
        member = member_index(trial_id)
        frozen = by_member.get(member)
        if frozen is None or frozen.state.is_finished():
            continue
        last = result.metrics or {}
        fid = last.get("fid")
        if result.error is not None:
            state, value, status = TrialState.FAIL, None, "errored"
        elif last.get("diverged"):
            state, value, status = TrialState.FAIL, None, "diverged"
        elif fid is None or not math.isfinite(fid) or last.get("kimg", 0.0) < max_kimg - 1e-9:
            state, value, status = TrialState.PRUNED, None, "pruned"
        else:
            state, value, status = TrialState.COMPLETE, float(fid), "completed"
        storage = study._storage
        storage.set_trial_user_attr(frozen._trial_id, "ray_trial_id", trial_id)
        storage.set_trial_user_attr(frozen._trial_id, "status", status)
        storage.set_trial_user_attr(frozen._trial_id, "scheduler", "pbt")
        storage.set_trial_user_attr(frozen._trial_id, "final_settings",
                                    {k: _plain(result.config.get(k)) for k in PBT_FIELDS if k in result.config})
        storage.set_trial_user_attr(frozen._trial_id, "exploits", sum(1 for e in exploits if e["trial_id"] == trial_id))
        storage.set_trial_state_values(frozen._trial_id, state, None if value is None else [value])


def cloned_from(checkpoint_path: str, own_trial_id: str) -> str:
    """The trial whose checkpoint a restored trial starts from, when it is another's (a PBT exploit):
    Tune names trial folders TRAINABLE_TRIALID_..., and the checkpoint lies in its trial's folder."""
    folder = checkpoint_path.rstrip("/").rsplit("/", 2)[-2] if "/" in checkpoint_path else ""
    donor = folder_trial_id(folder)
    return donor if donor and donor != own_trial_id else ""


def folder_trial_id(folder: str) -> str:
    """The trial id in a Tune trial folder's name (TRAINABLE_TRIALID_...), or ''."""
    match = re.search(r"_([0-9a-f]{5,}_\d{5})_", folder + "_")
    return match.group(1) if match else ""
