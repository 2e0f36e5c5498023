"""The lab's four questions, answered from the frames: each answer is data plus a markdown paragraph.

    from analysis.answers import answer_all
    for a in answer_all(exps):            # exps = analysis.frames.load_experiments([...])
        print(a.title); print(a.markdown); a.data   # dict of small DataFrames / dicts

Every number in `markdown` is a value of the frames (trials / history) or of the Optuna study at the
printed rounding (analysis.fmt), or a count, sum or share of trials that `data` holds. Where the
frames cannot answer (no VAE trials, one trial, no study) the answer says "Not enough data" and why,
and `enough` is False: nothing is guessed.

Method constants (not results) are written on lines that start with "_Method:_".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from analysis import fmt
from analysis.final import row_sampler
from analysis.frames import (
    COLLAPSE_CLASSES,
    COLLAPSE_KL,
    UNTRAINED_FID,
    ExperimentSet,
    NotEnoughData,
    finite,
    is_categorical,
    param_importances,
    ranked,
    searched_params,
)

QUESTIONS = {
    "q1": "Which hyperparameters most influenced GAN quality and stability?",
    "q2": "Is there evidence of mode collapse? What helped?",
    "q3": "How did the latent size affect VAE reconstructions and samples?",
    "q4": "GAN or VAE: which reached the better FID, and at what cost?",
}
DISCRETE_MAX_VALUES = 6  # a numeric parameter with at most this many values, some tried twice, is compared value by value


@dataclass
class Answer:
    key: str
    title: str
    markdown: str
    data: dict[str, Any] = field(default_factory=dict)
    enough: bool = True


def not_enough(key: str, why: str, data: dict[str, Any] | None = None) -> Answer:
    return Answer(key, QUESTIONS[key], f"**Not enough data:** {why}.", data or {}, enough=False)


def answer_all(exps: ExperimentSet) -> list[Answer]:
    return [q1_gan_hyperparameters(exps), q2_mode_collapse(exps), q3_vae_latent(exps), q4_gan_vs_vae(exps)]


def _done(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials that have ended (running and pending ones can still change)."""
    return trials[trials["status"].isin(["completed", "pruned", "diverged", "errored"])]


# ------------------------------------------------------------------------------------------
# Q1


def q1_gan_hyperparameters(exps: ExperimentSet) -> Answer:
    gan_all = exps.trials[exps.trials["family"] == "gan"] if len(exps.trials) else exps.trials
    if len(gan_all) == 0:
        return not_enough("q1", "no GAN trials in these experiments")
    parts: list[str] = []
    data: dict[str, Any] = {}
    any_enough = False
    for exp in exps:
        gan = exp.trials[exp.trials["family"] == "gan"]
        if len(gan) == 0:
            continue
        lines = [f"**{exp.name}** ({exp.kind}; {fmt.count(len(gan))} GAN trials):", ""]
        # importance
        if exp.study is not None and (exp.trials["family"] == "gan").all():
            try:
                imp, facts = param_importances(exp.study)
                data[f"{exp.name}/importance"] = imp
                data[f"{exp.name}/importance_facts"] = facts
                top = imp.iloc[0]
                ranked_text = ", ".join(f"{p} {fmt.importance(v)}" for p, v in zip(imp["param"], imp["importance"]))
                lines.append(f"- Importance for FID (PED-ANOVA on the {fmt.count(facts['complete_trials'])} trials that trained "
                             f"the full budget): **{top['param']}** matters most ({ranked_text}).")
                any_enough = True
            except NotEnoughData as err:
                lines.append(f"- Importance: not enough data: {err}.")
        else:
            lines.append("- Importance: not enough data: no Optuna study (a grid experiment has no sampler to analyse); "
                         "see the per-setting comparison instead.")
        # best vs worst settings, on trials that trained the full budget
        full = ranked(gan[gan["status"] == "completed"])
        params = searched_params(gan, exp.space)
        if len(full) >= 2 and params:
            rows = settings_table(full, params)
            data[f"{exp.name}/settings"] = pd.DataFrame(rows)
            lines.append(f"- Best vs worst settings among the {fmt.count(len(full))} GAN trials that trained the full budget "
                         "(best FID per setting; lower is better):")
            lines.append("")
            lines.append(fmt.table(rows, ["parameter", "best setting", "worst setting"]))
            lines.append("")
            any_enough = True
        else:
            lines.append(f"- Settings: not enough data: {fmt.count(len(full))} GAN trial(s) trained the full budget "
                         "(a comparison needs two).")
        # stability
        done = _done(gan)
        if len(done):
            stab = stability_table(done)
            data[f"{exp.name}/stability"] = stab
            cells = [f"{row.kind}: {fmt.count(row.diverged)} of {fmt.count(row.trials)} diverged "
                     f"({fmt.percent(row.diverged, row.trials)})" for row in stab.itertuples()]
            lines.append("- Stability (trials whose losses or FID became non-finite): " + "; ".join(cells) + ".")
            reasons = done.loc[done["status"] == "diverged", "diverge_reason"].dropna().astype(str)
            reasons = reasons[reasons != ""]
            if len(reasons):
                lines.append("  Reasons: " + "; ".join(sorted(set(f"`{r}`" for r in reasons))) + ".")
            any_enough = True
        parts.append("\n".join(lines))
    if not any_enough:
        return not_enough("q1", "no GAN trial has ended yet", data)
    method = ("_Method:_ importance is Optuna's PED-ANOVA on COMPLETE trials only (ASHA-stopped trials have a FID at a "
              "lower budget, diverged ones none); conditional parameters (clip_value, gp_lambda) count only in the "
              "trials where they apply. Settings compare the best FID reached with each value (numeric parameters with "
              "many values: the values of the best and worst trials).")
    return Answer("q1", QUESTIONS["q1"], "\n\n".join(parts + [method]), data)


def settings_table(full: pd.DataFrame, params: list[str]) -> list[dict[str, str]]:
    """Per parameter: the setting with the best and the worst best-FID (discrete params), or the
    value of the best and the worst trial (continuous params)."""
    rows = []
    for p in params:
        d = full[full[p].notna()]
        if d[p].astype(str).nunique() < 2:
            continue
        repeated = d[p].astype(str).nunique() < len(d)
        if is_categorical(full, p) or (d[p].nunique() <= DISCRETE_MAX_VALUES and repeated):
            per = d.groupby(d[p].astype(str))["fid_best"].agg(["min", "size"]).sort_values("min")
            best_v, worst_v = per.index[0], per.index[-1]
            rows.append({
                "parameter": p,
                "best setting": f"{_value_text(d, p, best_v)}: FID {fmt.fid(per.loc[best_v, 'min'])} "
                                f"({fmt.trials(per.loc[best_v, 'size'])})",
                "worst setting": f"{_value_text(d, p, worst_v)}: FID {fmt.fid(per.loc[worst_v, 'min'])} "
                                 f"({fmt.trials(per.loc[worst_v, 'size'])})",
            })
        else:
            b, w = d.iloc[0], d.iloc[-1]
            among = "" if len(d) == len(full) else f" of the {fmt.count(len(d))} with {p}"
            rows.append({
                "parameter": p,
                "best setting": f"{p}={fmt.param(b[p])} (best trial{among}, FID {fmt.fid(b['fid_best'])})",
                "worst setting": f"{p}={fmt.param(w[p])} (worst trial{among}, FID {fmt.fid(w['fid_best'])})",
            })
    return rows


def _value_text(d: pd.DataFrame, p: str, key: str) -> str:
    value = d.loc[d[p].astype(str) == key, p].iloc[0]
    return f"{p}={fmt.param(value)}"


def stability_table(done: pd.DataFrame) -> pd.DataFrame:
    g = done.groupby("kind")
    out = pd.DataFrame({"trials": g.size(), "diverged": g["status"].apply(lambda s: int((s == "diverged").sum()))})
    out["share"] = out["diverged"] / out["trials"]
    return out.reset_index()


# ------------------------------------------------------------------------------------------
# Q2


def q2_mode_collapse(exps: ExperimentSet) -> Answer:
    t = exps.trials
    gan = t[(t["family"] == "gan")] if len(t) else t
    if len(gan) == 0:
        return not_enough("q2", "no GAN trials in these experiments")
    if "classes_covered" not in gan or gan["classes_covered"].notna().sum() == 0:
        return not_enough("q2", "no GAN evaluation recorded the class-diversity metrics (classes_covered, kl_uniform)")
    d = gan[gan["classes_covered"].notna() & finite(gan["kl_uniform"]).notna()].copy()
    low = (d["classes_covered"] < COLLAPSE_CLASSES) | (d["kl_uniform"] > COLLAPSE_KL)
    # at a high FID the samples are not yet images of the dataset: low coverage there is "not yet trained"
    d["untrained"] = low & ~(finite(d["fid_final"]) <= UNTRAINED_FID)
    d["collapsed"] = low & ~d["untrained"]
    rows = []
    for kind, g in d.groupby("kind"):
        worst = g.sort_values(["kl_uniform"], ascending=False).iloc[0]
        rows.append({
            "loss": kind,
            "trials": fmt.count(len(g)),
            "flagged": fmt.count(int(g["collapsed"].sum())),
            "not yet trained": fmt.count(int(g["untrained"].sum())),
            "fewest classes covered": fmt.count(g["classes_covered"].min()),
            "lowest KL from uniform": fmt.kl(g["kl_uniform"].min()),
            "highest KL from uniform": f"{fmt.kl(worst['kl_uniform'])} ({worst['label']})",
        })
    flagged = d[d["collapsed"]]
    lines = []
    samples = sorted({int(n) for n in d["fid_samples"].dropna()})
    lines.append(f"Class diversity of each GAN trial's samples at its last evaluation (domain classifier; "
                 f"{', '.join(fmt.count(n) for n in samples)} samples per evaluation):")
    lines.append("")
    lines.append(fmt.table(rows))
    lines.append("")
    if len(flagged):
        worst = flagged.sort_values("kl_uniform", ascending=False).iloc[0]
        lines.append(f"**Yes**: {fmt.count(len(flagged))} of {fmt.count(len(d))} GAN trials show (partial) mode collapse; "
                     f"the strongest is {worst['label']} (classes covered: {fmt.count(worst['classes_covered'])}, "
                     f"KL {fmt.kl(worst['kl_uniform'])}, FID {fmt.fid(worst['fid_final'])}).")
    elif d["untrained"].any():
        lines.append(f"**No evidence**: no trained GAN trial is flagged; the {fmt.count(int(d['untrained'].sum()))} trial(s) "
                     f"with low class coverage are not yet trained (final FID above {fmt.fid(UNTRAINED_FID)}), which "
                     "says nothing about mode collapse.")
    else:
        lines.append(f"**No** trial is flagged: all {fmt.count(len(d))} GAN trials cover most classes evenly "
                     f"(fewest classes covered {fmt.count(d['classes_covered'].min())}, highest KL "
                     f"{fmt.kl(d['kl_uniform'].max())}).")
    if len(flagged) and d["untrained"].any():
        lines.append(f"Not counted as collapse: {fmt.count(int(d['untrained'].sum()))} trial(s) with low class coverage at a "
                     f"final FID above {fmt.fid(UNTRAINED_FID)} (not yet trained).")
    by_kind = d.groupby("kind")["collapsed"].agg(["sum", "size"])
    if len(by_kind) > 1:
        clean = [k for k, r in by_kind.iterrows() if r["sum"] == 0]
        hit = [k for k, r in by_kind.iterrows() if r["sum"] > 0]
        if clean and hit:
            lines.append(f"What helped: no trial with loss {', '.join(clean)} was flagged, against "
                         + ", ".join(f"{fmt.count(by_kind.loc[k, 'sum'])} of {fmt.count(by_kind.loc[k, 'size'])} with {k}"
                                     for k in hit)
                         + ".")
        else:
            lines.append("What helped: the loss does not separate collapsed from diverse trials here "
                         f"({'every' if not clean else 'no'} loss has a flagged trial).")
    else:
        lines.append("What helped: not enough data: only one GAN loss was tried, so there is nothing to compare.")
    lines.append("")
    lines.append(f"_Method:_ flagged when fewer than {COLLAPSE_CLASSES} classes are covered or the KL of the class shares "
                 f"from uniform exceeds {COLLAPSE_KL} nats, at a final FID of at most {fmt.fid(UNTRAINED_FID)}; the real "
                 "test split sits near 0. The same low coverage at a higher FID is \"not yet trained\": its samples are "
                 "not yet recognisable images, so which classes they resemble says nothing about collapse. With few "
                 "samples per evaluation the KL of even a perfect generator is above 0 (sampling noise).")
    return Answer("q2", QUESTIONS["q2"], "\n".join(lines), {"diversity": pd.DataFrame(rows), "flagged": flagged})


# ------------------------------------------------------------------------------------------
# Q3


def q3_vae_latent(exps: ExperimentSet) -> Answer:
    t = exps.trials
    vae = t[t["family"] == "vae"] if len(t) else t
    if len(vae) == 0:
        return not_enough("q3", "no VAE trials in these experiments (run e.g. `--grid lab1-vae` or `--family vae`)")
    d = vae[finite(vae["fid_best"]).notna()]
    if "test_recon" in d:
        d = d[d["test_recon"].notna()]
    if len(d) == 0:
        return not_enough("q3", "no VAE trial has been evaluated yet")
    if d["z_dim"].nunique() < 2:
        return not_enough("q3", f"every evaluated VAE trial has the same latent size (z_dim={fmt.param(d['z_dim'].iloc[0])}); "
                                "a comparison needs two")
    parts, data = [], {}
    for (exp, dataset), g in d.groupby(["experiment", "dataset"]):
        g = g.sort_values(["z_dim", "fid_best"])
        cols = ["z_dim"] + [c for c in ("kl_beta", "regularize") if g[c].astype(str).nunique() > 1]
        rows = [{
            **{c: fmt.param(r[c]) for c in cols},
            "trial": r["label"],
            "status": r["status"],
            "test recon (nats)": fmt.nats(r.get("test_recon")),
            "test KL (nats)": fmt.nats(r.get("test_kl")),
            "best FID": fmt.fid(r["fid_best"]),
        } for r in g.to_dict("records")]
        data[f"{exp}/{dataset}"] = pd.DataFrame(rows)
        lines = [f"**{exp}**, {dataset} ({fmt.count(len(g))} VAE trials):", "", fmt.table(rows), ""]
        if g["z_dim"].nunique() < 2:
            lines.append("Not enough data: one latent size only.")
            parts.append("\n".join(lines))
            continue
        best_recon = g.loc[g["test_recon"].idxmin()]
        best_fid = g.loc[g["fid_best"].idxmin()]
        per_z = g.groupby("z_dim").agg(recon=("test_recon", "min"), fid=("fid_best", "min")).sort_index()
        recon_trend = _trend(per_z["recon"])
        fid_trend = _trend(per_z["fid"])
        lines.append(f"Reconstruction: best at z_dim={fmt.param(best_recon['z_dim'])} "
                     f"({fmt.nats(best_recon['test_recon'])} nats on held-out images); across latent sizes it "
                     f"{recon_trend} as z_dim grows.")
        lines.append(f"Samples: best FID at z_dim={fmt.param(best_fid['z_dim'])} ({fmt.fid(best_fid['fid_best'])}); "
                     f"FID {fid_trend} as z_dim grows.")
        if "test_kl" in g and g["test_kl"].notna().any():
            lines.append(f"KL to the prior {_trend(g.groupby('z_dim')['test_kl'].min().sort_index())} as z_dim grows.")
        if best_recon["z_dim"] != best_fid["z_dim"]:
            lines.append("The best reconstructions and the best samples come from different latent sizes: a trade-off.")
        else:
            lines.append("The same latent size gives both the best reconstructions and the best samples here.")
        parts.append("\n".join(lines))
    samplers = {row_sampler(r) for r in d.to_dict("records")} or {"prior"}
    drawn = {"prior": "prior samples decoded from z ~ N(0, I)",
             "gmm": "samples decoded from codes drawn from a Gaussian mixture fitted to the training images' codes "
                    "(latent_sampler=gmm)"}
    parts.append("_Method:_ reconstruction and KL are measured on the first 1000 test images (all of them in a "
                 "smaller test split) at each trial's last evaluation (nats per image, lower is better); FID scores "
                 + " or ".join(drawn.get(x, str(x)) for x in sorted(samplers))
                 + ". With several trials per latent size, the best one per size sets the trend.")
    return Answer("q3", QUESTIONS["q3"], "\n\n".join(parts), data)


def _trend(series: pd.Series) -> str:
    diffs = series.diff().dropna()
    if len(diffs) == 0:
        return "cannot be judged (one value)"
    if (diffs < 0).all():
        return "decreases steadily"
    if (diffs > 0).all():
        return "increases steadily"
    return "does not change monotonically"


# ------------------------------------------------------------------------------------------
# Q4


def q4_gan_vs_vae(exps: ExperimentSet) -> Answer:
    t = exps.trials
    if len(t) == 0:
        return not_enough("q4", "no trials")
    r = ranked(t)
    families = set(r["family"]) if len(r) else set()
    if not {"gan", "vae"} <= families:
        missing = sorted({"gan", "vae"} - families)
        return not_enough("q4", f"no {' or '.join(m.upper() for m in missing)} trial with a finite FID in these experiments")
    rows, lines, data = [], [], {}
    groups = r.groupby(["dataset", "fid_backbone", "fid_samples"])
    compared = 0
    for (dataset, backbone, n), g in groups:
        if not {"gan", "vae"} <= set(g["family"]):
            lines.append(f"- {dataset} ({backbone} backbone, {fmt.count(n)} samples): not enough data: only "
                         f"{', '.join(sorted(set(g['family'])))} trials with this FID setup.")
            continue
        compared += 1
        same_setup = t[(t["dataset"] == dataset) & (t["fid_backbone"] == backbone) & (t["fid_samples"] == n)]
        fam_rows = {}
        for family in ("gan", "vae"):
            best = g[g["family"] == family].iloc[0]
            spent = same_setup[same_setup["family"] == family]
            fam_rows[family] = best
            rows.append({
                "dataset": dataset,
                "FID setup": f"{backbone}, {fmt.count(n)} samples",
                "family": family.upper(),
                "best trial": best["label"],
                "best FID": fmt.fid(best["fid_best"]),
                "its kimg": fmt.kimg(best["kimg"]),
                "its wall time (s)": fmt.seconds(best["wall_time_s"]),
                "trials": fmt.count(len(spent)),
                "kimg spent (all trials)": fmt.kimg(spent["kimg"].sum()),
                "wall time (all trials, s)": fmt.seconds(spent["wall_time_s"].sum()),
            })
        gan_best, vae_best = fam_rows["gan"], fam_rows["vae"]
        winner = "GAN" if gan_best["fid_best"] < vae_best["fid_best"] else "VAE"
        if gan_best["fid_best"] == vae_best["fid_best"]:
            winner = "neither (a tie)"
        lines.append(f"- {dataset}: the better FID is the **{winner}**'s: GAN {fmt.fid(gan_best['fid_best'])} "
                     f"({gan_best['label']}) vs VAE {fmt.fid(vae_best['fid_best'])} ({vae_best['label']}).")
    if not compared:
        return not_enough("q4", "GAN and VAE trials never share a dataset and FID setup (backbone, sample count)")
    data["comparison"] = pd.DataFrame(rows)
    text = "\n".join([fmt.table(rows), "", *lines, "",
                      "_Method:_ only FIDs with the same dataset, backbone and sample count are compared. kimg counts real "
                      "images seen (by the critic for a GAN, by the model for a VAE), so one GAN kimg costs more compute "
                      "than one VAE kimg when n_critic > 1; wall time is each trial's own training and evaluation time "
                      "(trials ran concurrently, so the sums exceed elapsed time)."])
    return Answer("q4", QUESTIONS["q4"], text, data)
