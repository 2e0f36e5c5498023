"""One function per plot. Each takes frames (from analysis.frames) and returns a matplotlib Figure.

Every function accepts `ax=None`: it then makes its own figure. One-panel plots draw into a given
Axes; plots with several panels take a sequence of as many Axes. A plot the data cannot support
raises `analysis.frames.NotEnoughData` with the reason, instead of drawing an empty or misleading
figure.

Conventions: FID axes say which backbone and sample count made the numbers (FIDs of different
backbones or sample counts are not comparable); parameters sampled log-uniformly (lr, clip_value,
gp_lambda, z_dim, kl_beta) get log axes; colours follow `kind` (the GAN loss, or vae / ae) in every
plot.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from tuner.config.space import LOG_SCALED as LOG_PARAMS  # the space draws them log-uniformly
from analysis.frames import (
    COLLAPSE_CLASSES,
    COLLAPSE_KL,
    NotEnoughData,
    best_evaluations,
    class_hist,
    compute_curve,
    compute_totals,
    fid_setup_text,
    final_evaluations,
    finite,
    is_categorical,
    param_importances,
    ranked,
    real_class_hist,
    searched_params,
)

KIND_ORDER = ("bce", "hinge", "lsgan", "wgan", "wgan-gp", "vae", "ae")
_BASE_COLORS = dict(zip(KIND_ORDER, sns.color_palette("tab10", 10)))
STATUS_MARKERS = {"completed": "o", "pruned": "X", "diverged": "v", "errored": "s", "running": "P", "pending": "."}
FID_HELP = "lower is better"


def kind_colors(kinds) -> dict[str, Any]:
    colors = dict(_BASE_COLORS)
    extra = [k for k in kinds if k not in colors]
    for k, c in zip(extra, sns.color_palette("Set2", len(extra))):
        colors[k] = c
    return colors


def kind_order(kinds) -> list[str]:
    kinds = list(dict.fromkeys(k for k in kinds if isinstance(k, str)))
    return [k for k in KIND_ORDER if k in kinds] + sorted(k for k in kinds if k not in KIND_ORDER)


def fid_axis_label(trials: pd.DataFrame, what: str = "FID", sep: str = " ") -> str:
    return f"{what}{sep}({fid_setup_text(trials)}; {FID_HELP})"


def _styled(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85):
            return fn(*args, **kwargs)

    return wrapper


def _axes(ax, n: int, ncols: int | None = None, panel_size=(5.0, 3.6)) -> tuple[Figure, list]:
    """A figure with n panels, or the caller's Axes (one, or a sequence of n)."""
    if ax is None:
        ncols = ncols or n
        nrows = math.ceil(n / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size[0] * ncols, panel_size[1] * nrows), squeeze=False)
        axes = list(axes.ravel())
        for extra in axes[n:]:
            extra.remove()
        return fig, axes[:n]
    axes = list(ax) if isinstance(ax, (list, tuple, np.ndarray)) else [ax]
    axes = list(np.ravel(axes))
    if len(axes) != n:
        raise ValueError(f"this plot has {n} panel(s): pass ax=None or a sequence of {n} Axes, got {len(axes)}")
    return axes[0].figure, axes


def _log_if_wide(ax, values, axis: str = "y", ratio: float = 20.0) -> None:
    v = finite(pd.Series(values)).dropna()
    v = v[v > 0]
    if len(v) and v.max() / v.min() > ratio:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


def _log_axis(ax, values, axis: str = "x") -> None:
    """A log axis with readable ticks: the values themselves for a few well-separated integers
    (z_dim), powers of two for other integers, decades (plus the data's ends when fewer than two
    decades fall inside) for floats."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    v = pd.to_numeric(pd.Series(values), errors="coerce").dropna()
    v = v[v > 0]
    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    if not len(v):
        return
    lo, hi = float(v.min()), float(v.max())
    if (v == v.round()).all():
        uniq = sorted(v.unique())
        spread = all(b / a >= 1.4 for a, b in zip(uniq, uniq[1:]))
        if not (len(uniq) <= 8 and spread):
            uniq = [2.0 ** k for k in range(math.floor(math.log2(lo)), math.ceil(math.log2(hi)) + 1)]
        ticks, label = uniq, (lambda x, _: f"{x:g}")
    else:
        ticks = [10.0 ** k for k in range(math.ceil(math.log10(lo)), math.floor(math.log10(hi)) + 1)]
        if len(ticks) < 2:
            ticks = sorted({lo, hi, *ticks})
        label = lambda x, _: f"{x:.2g}"  # noqa: E731
    target.set_major_locator(FixedLocator(ticks))
    target.set_major_formatter(FuncFormatter(label))
    target.set_minor_locator(NullLocator())
    target.set_minor_formatter(NullFormatter())


def _with_config(history: pd.DataFrame, trials: pd.DataFrame, cols: Sequence[str]) -> pd.DataFrame:
    cols = [c for c in cols if c in trials.columns and c not in history.columns]
    return history.merge(trials[["experiment", "trial_id", *cols]], on=["experiment", "trial_id"], how="left")


def _exp_prefix(trials: pd.DataFrame) -> bool:
    return trials["experiment"].nunique() > 1


def _short(label: str, row: dict[str, Any], with_exp: bool) -> str:
    return f"{row['experiment']}: {label}" if with_exp else label


def _finish(fig: Figure, title: str | None = None) -> Figure:
    if title:
        fig.suptitle(title, fontsize="large")
    fig.tight_layout()
    return fig


def _require(ok: bool, reason: str) -> None:
    if not ok:
        raise NotEnoughData(reason)


# ------------------------------------------------------------------------------------------
# the lab's five plots


@_styled
def plot_gan_losses(history: pd.DataFrame, trials: pd.DataFrame, ax=None) -> Figure:
    """Critic (D) and generator (G) losses over kimg, one line per GAN trial, by dataset and loss."""
    gan = trials[trials["family"] == "gan"]
    _require(len(gan) > 0, "no GAN trials")
    h = _with_config(history, gan, ["dataset", "kind", "label"])
    h = h[h["trial_id"].isin(gan["trial_id"]) & h.get("loss_d", pd.Series(index=h.index, dtype=float)).notna()]
    _require(len(h) > 0, "no GAN evaluation recorded D/G losses yet")
    datasets = sorted(h["dataset"].unique())
    fig, axes = _axes(ax, 2 * len(datasets), ncols=2, panel_size=(5.5, 3.6))
    colors = kind_colors(h["kind"].unique())
    order = kind_order(h["kind"])
    for i, dataset in enumerate(datasets):
        d = h[h["dataset"] == dataset]
        for j, (key, name) in enumerate((("loss_d", "critic (D) loss"), ("loss_g", "generator (G) loss"))):
            a = axes[2 * i + j]
            sns.lineplot(data=d, x="kimg", y=key, hue="kind", hue_order=order, palette=colors,
                         units="trial_id", estimator=None, alpha=0.75, lw=1.2, marker="o", markersize=3, ax=a,
                         legend=(i == 0 and j == 0))
            ylabel = "loss (mean since the previous eval)"
            values = d[key].dropna()
            if len(values) and values.abs().max() > 50:
                a.set_yscale("symlog", linthresh=1.0)
                lo, hi = values.min(), values.max()
                a.set_ylim(lo * 2 if lo < 0 else -0.5, hi * 2 if hi > 0 else 0.5)
                ylabel += ", symlog scale"
            a.set(title=f"{dataset}: {name}", xlabel="kimg (thousands of real images seen)", ylabel=ylabel)
            a.axhline(0, color="0.6", lw=0.8)
    if axes[0].get_legend() is not None:
        axes[0].legend(title="loss", fontsize="small")
    return _finish(fig, "GAN losses during training (one line per trial; scales differ between losses)")


@_styled
def plot_gan_fid_by_config(trials: pd.DataFrame, ax=None, top: int = 30) -> Figure:
    """Best FID of every GAN trial (bar), labelled by loss and z_dim, best first."""
    gan = trials[trials["family"] == "gan"]
    _require(len(gan) > 0, "no GAN trials")
    r = ranked(gan)
    _require(len(r) > 0, "no GAN trial has a finite FID yet")
    shown = r.head(top)
    fig, axes = _axes(ax, 1, panel_size=(9.0, max(2.5, 0.32 * len(shown) + 1.2)))
    a = axes[0]
    labels = []
    for row in shown.to_dict("records"):
        label = row["label"] if shown["dataset"].nunique() == 1 else f"{row['dataset']} {row['label']}"
        label = _short(label, row, _exp_prefix(shown))
        if row["status"] != "completed":
            label += f" ({row['status']} at {row['kimg']:.2f} kimg)"
        labels.append(label)
    colors = kind_colors(shown["kind"].unique())
    y = np.arange(len(shown))
    a.barh(y, shown["fid_best"], color=[colors[k] for k in shown["kind"]],
           hatch=None, edgecolor="0.2", lw=0.5)
    for yi, (v, status) in enumerate(zip(shown["fid_best"], shown["status"])):
        a.text(v, yi, f" {v:.2f}", va="center", fontsize="small")
        if status != "completed":
            a.patches[yi].set_hatch("//")
    a.set_yticks(y, labels, fontsize="small")
    a.invert_yaxis()
    a.set_xlim(0, shown["fid_best"].max() * 1.15)
    a.set_xlabel(fid_axis_label(shown, "best FID of the trial"))
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[k]) for k in kind_order(shown["kind"])]
    names = kind_order(shown["kind"])
    if (shown["status"] != "completed").any():
        handles.append(plt.Rectangle((0, 0), 1, 1, facecolor="white", edgecolor="0.2", hatch="//"))
        names.append("stopped early (lower budget)")
    a.legend(handles, names, title="loss", fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    missing = len(gan) - len(r)
    extra = f"; {missing} trial(s) without a finite FID not shown" if missing else ""
    more = f"; best {top} of {len(r)} shown" if len(r) > top else ""
    title = f"GAN FID by configuration ({len(shown)} trial(s){more}{extra})"
    return _finish(fig, title)


@_styled
def plot_vae_losses(history: pd.DataFrame, trials: pd.DataFrame, ax=None) -> Figure:
    """VAE/AE loss components (total, reconstruction, KL) at each trial's last evaluation, against
    the latent size: training (mean over the last interval, solid) and held-out (the first 1000 test images,
    dotted)."""
    ae_trials = trials[trials["family"].isin(["vae", "ae"])]
    _require(len(ae_trials) > 0, "no VAE or AE trials")
    ae = final_evaluations(ae_trials, history)
    _require(len(ae) > 0 and "recon" in ae and ae["recon"].notna().any(), "no VAE/AE evaluation recorded its losses yet")
    panels = [("loss", None, "total loss (recon + kl_beta x KL)"), ("recon", "test_recon", "reconstruction"),
              ("kl", "test_kl", "KL to the prior")]
    fig, axes = _axes(ax, 3, panel_size=(4.6, 3.6))
    colors = kind_colors(ae["kind"].unique())
    datasets = sorted(ae["dataset"].unique())
    for a, (train_key, test_key, name) in zip(axes, panels):
        for (kind, dataset), g in ae.groupby(["kind", "dataset"]):
            tag = f"{kind} {dataset}" if len(datasets) > 1 else kind
            for key, ls, marker, suffix in ((train_key, "-", "o", "train"), (test_key, ":", "s", "test")):
                if key is None or key not in g or g[key].isna().all():
                    continue
                m = g.groupby("z_dim")[key].mean().sort_index()
                if len(datasets) > 1 and dataset != datasets[0]:
                    ls = "--" if suffix == "train" else "-."
                a.plot(m.index, m.values, ls=ls, marker=marker, color=colors[kind], label=f"{tag} ({suffix})")
        _log_axis(a, ae["z_dim"])
        a.set(title=name, xlabel="latent size z_dim (log scale)", ylabel="nats per image")
        if a.lines:
            a.legend(fontsize="x-small")
    several = " (mean of the trials at each z_dim)" if ae.groupby(["kind", "dataset", "z_dim"]).size().max() > 1 else ""
    return _finish(fig, f"VAE/AE losses by latent size at the last evaluation{several}")


@_styled
def plot_vae_fid_by_latent(trials: pd.DataFrame, ax=None) -> Figure:
    """Best FID of every VAE/AE trial (dots) against its latent size; the line joins the best trial
    of each latent size."""
    ae = trials[trials["family"].isin(["vae", "ae"])]
    _require(len(ae) > 0, "no VAE or AE trials")
    r = ranked(ae)
    _require(len(r) > 0, "no VAE/AE trial has a finite FID yet")
    fig, axes = _axes(ax, 1, panel_size=(6.5, 4.0))
    a = axes[0]
    colors = kind_colors(r["kind"].unique())
    multi = r["dataset"].nunique() > 1
    for (kind, dataset), g in r.groupby(["kind", "dataset"]):
        tag = f"{kind} {dataset}" if multi else kind
        a.scatter(g["z_dim"], g["fid_best"], color=colors[kind], s=30, alpha=0.7, edgecolor="0.2", lw=0.4)
        best = g.groupby("z_dim")["fid_best"].min().sort_index()
        a.plot(best.index, best.values, color=colors[kind], marker="o", ms=6, lw=1.6, label=f"{tag}: best per z_dim (dots: all)")
        if len(g) <= 12:
            for row in g.to_dict("records"):
                a.annotate(f"{row['fid_best']:.2f}", (row["z_dim"], row["fid_best"]), textcoords="offset points",
                           xytext=(5, 3), fontsize="x-small")
    _log_axis(a, r["z_dim"])
    a.set(xlabel="latent size z_dim (log scale)", ylabel=fid_axis_label(r, "best FID"))
    a.legend(title="family", fontsize="small")
    return _finish(fig, "VAE/AE FID of prior samples by latent size")


@_styled
def plot_gan_vs_vae(trials: pd.DataFrame, ax=None) -> Figure:
    """Best FID per family and dataset (bars), with every trial's best FID as a dot."""
    r = ranked(trials)
    _require(len(r) > 0, "no trial has a finite FID yet")
    r = r.assign(setup=[f"{d}\n{b}, {int(n)} samples" for d, b, n in zip(r["dataset"], r["fid_backbone"], r["fid_samples"])])
    fig, axes = _axes(ax, 1, panel_size=(max(5.0, 2.6 * r["setup"].nunique() + 2), 4.2))
    a = axes[0]
    fam_order = [f for f in ("gan", "vae", "ae") if f in set(r["family"])]
    palette = {"gan": _BASE_COLORS["hinge"], "vae": _BASE_COLORS["vae"], "ae": _BASE_COLORS["ae"]}
    best = r.groupby(["setup", "family"], as_index=False)["fid_best"].min()
    setups = sorted(r["setup"].unique())
    sns.barplot(data=best, x="setup", y="fid_best", hue="family", hue_order=fam_order, order=setups,
                palette=palette, alpha=0.6, ax=a, errorbar=None)
    sns.stripplot(data=r, x="setup", y="fid_best", hue="family", hue_order=fam_order, order=setups,
                  palette=palette, dodge=True, ax=a, size=4, edgecolor="0.2", linewidth=0.5, legend=False)
    for container in a.containers:
        labels = a.bar_label(container, fmt="best %.2f", fontsize="small", label_type="center", zorder=10)
        for text in labels:
            text.set_bbox(dict(boxstyle="round,pad=0.2", fc="white", ec="0.5", alpha=0.9))
    a.set(xlabel="", ylabel=f"FID ({FID_HELP})",
          title="bar: best trial; dots: every trial's best FID")
    a.legend(title="family", fontsize="small")
    if len(setups) > 1:
        a.text(0.5, -0.22, "FIDs of different datasets, backbones or sample counts are not comparable",
               transform=a.transAxes, ha="center", fontsize="small", color="0.3")
    return _finish(fig, "GAN vs VAE: best FID")


# ------------------------------------------------------------------------------------------
# the search


@_styled
def plot_fid_vs_params(trials: pd.DataFrame, params: Sequence[str] | None = None, ax=None) -> Figure:
    """Best FID against each varied parameter (of `params`, default every searchable field),
    coloured by loss (or family), marker by status."""
    r = ranked(trials)
    _require(len(r) > 0, "no trial has a finite FID yet")
    params = [p for p in searched_params(trials, params) if p in r]
    params = [p for p in params if r[p].notna().any()]
    _require(len(params) > 0, "no parameter varies across these trials")
    ncols = min(3, len(params))
    fig, axes = _axes(ax, len(params), ncols=ncols, panel_size=(4.3, 3.4))
    colors = kind_colors(r["kind"].unique())
    order = kind_order(r["kind"])
    statuses = [s for s in STATUS_MARKERS if s in set(r["status"])]
    for a, p in zip(axes, params):
        d = r[r[p].notna()]
        if is_categorical(trials, p) or d[p].nunique() <= 1:
            d = d.assign(**{p: d[p].astype(str)})
            cats = sorted(d[p].unique(), key=lambda v: (len(v), v))
            for status in statuses:
                s = d[d["status"] == status]
                if len(s):
                    sns.stripplot(data=s, x=p, y="fid_best", hue="kind", hue_order=order, order=cats, palette=colors,
                                  marker=STATUS_MARKERS[status], size=6, jitter=0.15, ax=a, legend=False,
                                  edgecolor="0.2", linewidth=0.4)
        else:
            sns.scatterplot(data=d, x=p, y="fid_best", hue="kind", hue_order=order, palette=colors, style="status",
                            markers=STATUS_MARKERS, style_order=statuses, s=40, ax=a, legend=False,
                            edgecolor="0.2", linewidth=0.4)
            if p in LOG_PARAMS:
                _log_axis(a, d[p])
            elif (pd.to_numeric(d[p]) == pd.to_numeric(d[p]).round()).all():
                from matplotlib.ticker import MaxNLocator

                a.xaxis.set_major_locator(MaxNLocator(integer=True))
        n_na = int(r[p].isna().sum())
        log = p in LOG_PARAMS and a.get_xscale() == "log"
        a.set(title=p + (f" ({n_na} trials n/a)" if n_na else ""), xlabel=p + (" (log scale)" if log else ""),
              ylabel=f"best FID ({fid_setup_text(r)})")
        _log_if_wide(a, r["fid_best"])
    handles = [Line2D([], [], ls="", marker="o", color=colors[k], label=k) for k in order]
    handles += [Line2D([], [], ls="", marker=STATUS_MARKERS[s], color="0.4", label=s) for s in statuses]
    fig = _finish(fig, f"Best FID vs each varied hyperparameter ({FID_HELP})")
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small", title="loss / status")
    return fig


@_styled
def plot_learning_curves(history: pd.DataFrame, trials: pd.DataFrame, ax=None,
                         rungs: dict[str, list[float]] | None = None) -> Figure:
    """FID against kimg for every trial; early-stopped trials marked where they stopped, the best
    trial of each experiment highlighted. `rungs` (experiment -> kimg) draws ASHA's milestones."""
    _require(len(history) > 0 and finite(history["fid"]).notna().any(), "no evaluation with a finite FID yet")
    h = _with_config(history, trials, ["kind", "label", "status", "family"])
    exps = list(dict.fromkeys(trials["experiment"]))
    exps = [e for e in exps if (h["experiment"] == e).any()]
    fig, axes = _axes(ax, len(exps), panel_size=(6.5, 4.4))
    colors = kind_colors(h["kind"].dropna().unique())
    order = kind_order(h["kind"])
    for a, exp in zip(axes, exps):
        he = h[h["experiment"] == exp]
        te = trials[trials["experiment"] == exp]
        best = ranked(te)
        best_id = best["trial_id"].iloc[0] if len(best) else None
        for trial_id, g in he.groupby("trial_id"):
            g = g.sort_values("kimg")
            fid = finite(g["fid"])
            kind, status = g["kind"].iloc[0], g["status"].iloc[0]
            if trial_id == best_id:
                continue
            a.plot(g["kimg"], fid, color=colors.get(kind, "0.5"), alpha=0.55, lw=1.1)
            ok = fid.notna()
            if status == "pruned" and ok.any():
                a.plot(g["kimg"][ok].iloc[-1], fid[ok].iloc[-1], "X", color=colors.get(kind, "0.5"), ms=8, mec="k", mew=0.6)
            if status == "diverged":
                x = g["kimg"].iloc[-1]
                yv = fid[ok].iloc[-1] if ok.any() else None
                if yv is not None:
                    a.plot(x, yv, "v", color="crimson", ms=8, mec="k", mew=0.6)
                else:
                    a.axvline(x, color="crimson", ls=":", lw=1)
        if best_id is not None:
            g = he[he["trial_id"] == best_id].sort_values("kimg")
            row = best.iloc[0]
            a.plot(g["kimg"], finite(g["fid"]), color="k", lw=2.6, marker="o", ms=4, zorder=5,
                   label=f"best: {row['label']} ({row['fid_best']:.2f})")
        for r in (rungs or {}).get(exp, []):
            a.axvline(r, color="0.5", ls="--", lw=0.8)
        _log_if_wide(a, he["fid"], ratio=5)
        a.set(title=exp, xlabel="kimg (thousands of real images seen)", ylabel=fid_axis_label(te))
    handles = [Line2D([], [], color=colors[k], label=k) for k in order]
    handles += [Line2D([], [], color="k", lw=2.6, label="best trial of the panel")]
    if (trials["status"] == "pruned").any():
        handles.append(Line2D([], [], ls="", marker="X", color="0.5", mec="k", label="stopped by ASHA (pruned)"))
    if (trials["status"] == "diverged").any():
        handles.append(Line2D([], [], ls="", marker="v", color="crimson", mec="k", label="diverged (last finite FID)"))
    if rungs and any(rungs.get(e) for e in exps):
        handles.append(Line2D([], [], color="0.5", ls="--", label="ASHA rung (grace x r^k)"))
    for a in axes:
        best_line = [l for l in a.get_lines() if l.get_label().startswith("best:")]
        if best_line:
            a.legend(handles=best_line, fontsize="small", loc="upper right")
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small", title="loss / family")
    return _finish(fig, "Learning curves: FID vs training budget, every trial")


@_styled
def plot_importance(study, ax=None) -> Figure:
    """PED-ANOVA hyperparameter importance of the study's COMPLETE (full-budget) trials."""
    frame, facts = param_importances(study)
    fig, axes = _axes(ax, 1, panel_size=(6.5, max(2.4, 0.4 * len(frame) + 1.3)))
    a = axes[0]
    y = np.arange(len(frame))
    a.barh(y, frame["importance"], color=sns.color_palette("crest", len(frame)))
    labels = [p if n == facts["complete_trials"] else f"{p} (in {n} trials)"
              for p, n in zip(frame["param"], frame["trials_with_param"])]
    a.set_yticks(y, labels)
    a.invert_yaxis()
    for yi, v in enumerate(frame["importance"]):
        a.text(v, yi, f" {v:.2f}", va="center", fontsize="small")
    a.set_xlim(0, max(frame["importance"].max() * 1.2, 0.05))
    a.set_xlabel("importance (normalised, sums to 1)")
    a.set_title(f"PED-ANOVA on {facts['complete_trials']} COMPLETE trials of {facts['all_trials']} "
                f"(top {facts['target_quantile']:.0%} vs all)", fontsize="medium")
    return _finish(fig, "Hyperparameter importance for FID")


@_styled
def plot_parallel_coordinates(trials: pd.DataFrame, family: str = "gan", top: int = 10,
                              params: Sequence[str] | None = None, ax=None) -> Figure:
    """The best trials across the searched parameters on normalised axes (log axes for log
    parameters); every other trial in light grey. Missing (conditional) values sit at 'n/a'."""
    fam = ranked(trials, family)
    _require(len(fam) > 0, f"no {family} trial has a finite FID yet")
    params = [p for p in searched_params(trials[trials["family"] == family], params) if p in fam]
    _require(len(params) > 0, f"no parameter varies across the {family} trials")
    axes_names = params + ["fid_best"]
    norm, ticks = {}, {}
    for p in axes_names:
        col = fam[p]
        if p != "fid_best" and (is_categorical(fam, p) or col.dropna().nunique() <= 1):
            cats = sorted(col.dropna().astype(str).unique(), key=lambda v: (len(v), v))
            pos = {c: (i / (len(cats) - 1) if len(cats) > 1 else 0.5) for i, c in enumerate(cats)}
            norm[p] = col.map(lambda v, pos=pos: pos.get(str(v), np.nan) if pd.notna(v) else np.nan)
            ticks[p] = list(pos.items())
        else:
            v = pd.to_numeric(col, errors="coerce").astype(float)
            t = np.log10(v) if p in LOG_PARAMS or (p == "fid_best" and v.min() > 0 and v.max() / v.min() > 20) else v
            lo, hi = np.nanmin(t), np.nanmax(t)
            norm[p] = (t - lo) / (hi - lo) if hi > lo else t * 0 + 0.5
            fmt = (lambda x: f"{x:.2f}") if p == "fid_best" else (lambda x: f"{x:.3g}")
            ticks[p] = [(fmt(v.min()), 0.0 if hi > lo else 0.5), (fmt(v.max()), 1.0 if hi > lo else 0.5)]
    data = pd.DataFrame(norm)
    fig, axes = _axes(ax, 1, panel_size=(max(6.0, 1.4 * len(axes_names) + 2), 4.6))
    a = axes[0]
    xs = np.arange(len(axes_names))
    na_y = -0.12
    top_rows = fam.head(top)
    cmap = plt.get_cmap("viridis")
    fids = top_rows["fid_best"]
    lo, hi = fids.min(), fids.max()
    for idx in fam.index.difference(top_rows.index):
        yv = data.loc[idx].fillna(na_y).values
        a.plot(xs, yv, color="0.8", lw=0.8, zorder=1)
    for rank, idx in enumerate(top_rows.index[::-1]):
        yv = data.loc[idx].fillna(na_y).values
        c = cmap(0.5 if hi == lo else (fam.loc[idx, "fid_best"] - lo) / (hi - lo))
        lw = 3.0 if idx == top_rows.index[0] else 1.6
        a.plot(xs, yv, color=c, lw=lw, marker="o", ms=3, zorder=2 + rank)
    for x, p in zip(xs, axes_names):
        a.axvline(x, color="0.3", lw=0.8, zorder=0)
        for text, yv in ticks[p]:
            a.text(x + 0.04, yv, str(text), fontsize="x-small", va="center", ha="left",
                   bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.8), zorder=20)
        if data[p].isna().any():
            a.text(x - 0.04, na_y, "n/a", fontsize="x-small", va="center", ha="right", color="0.2", zorder=20,
                   bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.9))
    a.set_xticks(xs, [p + ("\n(log)" if p in LOG_PARAMS else "") for p in axes_names[:-1]] + ["best FID"])
    a.axhline(na_y / 2, color="0.75", lw=0.6, ls=":", zorder=0)  # separates 'n/a' from the parameter ranges
    a.set_yticks([])
    a.set_ylim(na_y - 0.08, 1.08)
    a.set_xlim(-0.2, len(axes_names) - 0.4)
    a.grid(False)
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(lo, hi if hi > lo else lo + 1))
    fig.colorbar(sm, ax=a, label=fid_axis_label(fam, "best FID"), pad=0.02)
    shown = len(top_rows)
    rest = "; grey: the others" if shown < len(fam) else ""
    return _finish(fig, f"Best {shown} {family.upper()} trials of {len(fam)} (thick: the best{rest})")


@_styled
def plot_critic_outputs(history: pd.DataFrame, trials: pd.DataFrame, top: int = 3, ax=None) -> Figure:
    """Mean raw critic outputs D(x) on real and D(G(z)) on generated images over kimg, best GAN trials."""
    best = ranked(trials, "gan")
    _require(len(best) > 0, "no GAN trial has a finite FID yet")
    _require("d_real" in history and history["d_real"].notna().any(), "no evaluation recorded d_real / d_fake")
    best = best.head(top)
    fig, axes = _axes(ax, len(best), panel_size=(4.6, 3.6))
    for a, row in zip(axes, best.to_dict("records")):
        g = history[(history["experiment"] == row["experiment"]) & (history["trial_id"] == row["trial_id"])].sort_values("kimg")
        a.plot(g["kimg"], g["d_real"], marker="o", ms=3, label="D(x), real images", color="tab:blue")
        a.plot(g["kimg"], g["d_fake"], marker="o", ms=3, label="D(G(z)), generated", color="tab:red")
        a.axhline(0, color="0.5", lw=0.8)
        a.set(title=f"{row['label']}: FID {row['fid_best']:.2f}", xlabel="kimg",
              ylabel=f"mean raw critic output ({row['kind']})")
        a.legend(fontsize="x-small")
    return _finish(fig, "Critic outputs of the best GAN trials (raw scores, no sigmoid; a widening gap = D winning)")


@_styled
def plot_diversity(history: pd.DataFrame, trials: pd.DataFrame, top: int = 3, family: str | None = "gan",
                   ax=None) -> Figure:
    """Left: class histogram of generated samples (domain classifier) of the best trials, at their
    best evaluation, against the real test split. Right: classes covered vs KL from uniform for
    every trial (mode collapse sits top-left: few classes, high KL)."""
    be = best_evaluations(trials, history)
    _require(len(be) > 0 and "class_hist" in be, "no evaluation recorded the class histogram")
    be = be[be["class_hist"].map(lambda v: class_hist(v) is not None)]
    _require(len(be) > 0, "no evaluation recorded the class histogram")
    pool = be if family is None or not (be["family"] == family).any() else be[be["family"] == family]
    pool = pool.sort_values(["fid", "trial_index"])
    dataset = pool["dataset"].iloc[0]
    pool = pool[pool["dataset"] == dataset].head(top)
    real, source = real_class_hist(dataset)
    fig, axes = _axes(ax, 2, panel_size=(6.0, 4.0))
    a, b = axes
    width = 0.8 / (len(pool) + 1)
    classes = np.arange(10)
    a.bar(classes - 0.4 + width / 2, real, width, color="0.3", label="real test split")
    for i, row in enumerate(pool.to_dict("records")):
        hist = class_hist(row["class_hist"])
        a.bar(classes - 0.4 + width * (i + 1.5), hist, width,
              label=f"{row['label']} (FID {row['fid']:.2f}; covers {int(row['classes_covered'])}; KL {row['kl_uniform']:.3f})")
    a.set_xticks(classes)
    a.set(xlabel="class predicted by the domain classifier", ylabel="share of generated samples",
          title=f"{dataset}: class shares at each trial's best evaluation")
    a.legend(fontsize="x-small")
    colors = kind_colors(be["kind"].unique())
    jitter = np.random.default_rng(0).uniform(-0.25, 0.25, len(be))  # identical points stay visible
    be = be.assign(classes_jittered=be["classes_covered"] + jitter)
    sns.scatterplot(data=be, x="classes_jittered", y="kl_uniform", hue="kind", hue_order=kind_order(be["kind"]),
                    palette=colors, s=50, ax=b, edgecolor="0.2", linewidth=0.4, alpha=0.85)
    n_classes = len(real)
    b.axhline(math.log(n_classes), color="crimson", ls="--", lw=0.8)
    b.text(0.2, math.log(n_classes), "one class only (ln 10)", color="crimson", fontsize="x-small", va="bottom")
    b.axvspan(-0.3, COLLAPSE_CLASSES - 0.5, color="0.9", zorder=0)
    b.axhspan(COLLAPSE_KL, math.log(n_classes) * 1.12, color="0.9", zorder=0)
    b.text(0.2, 0.05, f"grey: flagged as mode collapse (< {COLLAPSE_CLASSES} classes or KL > {COLLAPSE_KL})",
           fontsize="x-small", color="0.3")
    b.set(xlabel="classes covered (share >= 5% of samples; dots jittered sideways)",
          ylabel="KL(generated class shares || uniform), nats",
          title="every trial at its best evaluation", xlim=(-0.3, n_classes + 0.5), ylim=(-0.05, math.log(n_classes) * 1.12))
    b.set_xticks(range(0, n_classes + 1))
    b.legend(title="loss / family", fontsize="x-small", loc="center right")
    fig.text(0.01, 0.005, f"real class shares: {source}", fontsize="x-small", color="0.3")
    return _finish(fig, "Sample diversity: classes of generated images")


@_styled
def plot_compute(exps, ax=None) -> Figure:
    """Left: kimg each experiment spent vs a full-budget grid of as many trials. Right: best FID so
    far against cumulative kimg (evaluations in wall-clock order)."""
    exps = list(exps)
    _require(len(exps) > 0, "no experiments")
    totals = compute_totals(exps)
    history = pd.concat([e.history for e in exps if not e.history.empty], ignore_index=True) \
        if any(not e.history.empty for e in exps) else pd.DataFrame()
    fig, axes = _axes(ax, 2, panel_size=(6.0, 4.2))
    a, b = axes
    x = np.arange(len(totals))
    a.bar(x - 0.2, totals["kimg_spent"], 0.4, label="spent (sum of kimg reached)", color="tab:green")
    a.bar(x + 0.2, totals["full_budget_kimg"], 0.4, label="full budget (trials x max_kimg)", color="0.7")
    for xi, row in zip(x, totals.to_dict("records")):
        a.text(xi - 0.2, row["kimg_spent"], f"{row['kimg_spent']:.2f}", ha="center", va="bottom", fontsize="small")
        a.text(xi + 0.2, row["full_budget_kimg"], f"{row['full_budget_kimg']:.2f}", ha="center", va="bottom", fontsize="small")
    a.set_xticks(x, [f"{e}\n({n} trials)" for e, n in zip(totals["experiment"], totals["trials"])])
    a.set(ylabel="kimg (thousands of real images)", title="training compute")
    a.legend(fontsize="small")
    if not history.empty:
        curve = compute_curve(history)
        palette = sns.color_palette("Dark2", len(exps))
        for color, exp in zip(palette, exps):
            c = curve[(curve["experiment"] == exp.name) & curve["best_so_far"].notna()]
            if len(c):
                b.step(c["cum_kimg"], c["best_so_far"], where="post", color=color, lw=2,
                       label=f"{exp.name} ({fid_setup_text(exp.trials)})")
                b.axvline(totals.loc[totals["experiment"] == exp.name, "full_budget_kimg"].iloc[0], color=color,
                          ls=":", lw=1)
        _log_if_wide(b, curve["best_so_far"], ratio=5)
        b.set(xlabel="cumulative kimg trained (all trials, wall-clock order)",
              ylabel=fid_axis_label(pd.concat([e.trials for e in exps], ignore_index=True), "best FID so far", "\n"),
              title="best FID so far vs compute (dotted: full-budget grid)")
        b.legend(fontsize="x-small")
    else:
        b.text(0.5, 0.5, "no evaluations yet", ha="center", transform=b.transAxes)
    return _finish(fig, "Compute accounting")


@_styled
def plot_seed_spread(exps, ax=None) -> Figure:
    """Best FID so far against cumulative kimg for a study run with several seeds: the median over
    seeds and their range (as Lucic et al. 2018, Fig. 5); single experiments as plain steps."""
    from analysis.frames import seed_groups

    exps = list(exps)
    groups = seed_groups(exps)
    _require(bool(groups), "no study was run with several seeds (experiments differing only in --seed)")
    fig, axes = _axes(ax, 1, panel_size=(7.5, 4.5))
    a = axes[0]
    grouped = {id(e) for members in groups.values() for e in members}
    curves = {e.name: compute_curve(e.history) for e in exps if not e.history.empty}
    top = max((float(c["cum_kimg"].iloc[-1]) for c in curves.values() if len(c)), default=1.0)
    xs = np.linspace(0, top, 200)

    def best_at(c: pd.DataFrame) -> np.ndarray:
        c = c[c["best_so_far"].notna()]
        idx = np.searchsorted(c["cum_kimg"].to_numpy(), xs, side="right") - 1
        return np.where(idx >= 0, c["best_so_far"].to_numpy()[np.clip(idx, 0, None)], np.nan) if len(c) else xs * np.nan

    palette = sns.color_palette("Dark2", len(groups) + len(exps))
    for color, (label, members) in zip(palette, groups.items()):
        ys = np.array([best_at(curves[e.name]) for e in members if e.name in curves])
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-nan columns before the first evaluation
            med, lo, hi = np.nanmedian(ys, 0), np.nanmin(ys, 0), np.nanmax(ys, 0)
        a.plot(xs, med, color=color, lw=2, label=f"{label}: median")
        a.fill_between(xs, lo, hi, color=color, alpha=0.2, label=f"{label}: range over seeds")
    for color, e in zip(palette[len(groups):], exps):
        if id(e) in grouped or e.name not in curves:
            continue
        c = curves[e.name][curves[e.name]["best_so_far"].notna()]
        a.step(c["cum_kimg"], c["best_so_far"], where="post", color=color, lw=1.5, label=e.name)
    _log_if_wide(a, pd.Series([v for c in curves.values() for v in c["best_so_far"].dropna()]), ratio=5)
    a.set(xlabel="cumulative kimg trained (all trials, wall-clock order)",
          ylabel=fid_axis_label(pd.concat([e.trials for e in exps], ignore_index=True), "best FID so far"),
          title="best FID so far vs compute, over seeds")
    a.legend(fontsize="x-small")
    return _finish(fig, "Best FID vs compute over seeds")
