"""The experiment report: report.md plus the images it embeds, from one or more experiments.

    python -m analysis.report ~/gentune_results/study ~/gentune_results/lab1 --out report/

Works on finished experiments and on studies still running (the frames are then rebuilt from
Ray's records). Writes REPORT_DIR/report.md, REPORT_DIR/plots/*.png and copies sample grids to
REPORT_DIR/images/. It replaces the hand-written lab report: the same grid of results, images and
plots and the four reflection questions, with every number read from the experiment's exports
(a real FID, named with its backbone and sample count).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from analysis import fmt
from tuner.config.cli import ArgumentParser
from tuner.config.schema import STATUSES
from tuner.config.atomic import write_whole
from analysis.answers import answer_all
from analysis.frames import (
    Experiment,
    ExperimentSet,
    NotEnoughData,
    fid_setup_text,
    load_experiments,
    ranked,
    searched_params,
)

PLOT_DPI = 110
AUTOENCODER_IMAGES = (("recon_kimg_", "Reconstruction"), ("kimg_", "Prior samples"), ("interp_kimg_", "Interpolation"))


class Report:
    """Builds report.md section by section; plots go to plots/, copied images to images/."""

    def __init__(self, exps: ExperimentSet, out: Path, top: int = 3):
        self.exps, self.out, self.top = exps, out, top
        self.lines: list[str] = []
        self.plots: list[Path] = []
        (out / "plots").mkdir(parents=True, exist_ok=True)
        (out / "images").mkdir(parents=True, exist_ok=True)

    # -- helpers -----------------------------------------------------------------------------
    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def plot(self, name: str, title: str, draw: Callable[[], Any], caption: str) -> bool:
        """Draw one figure into plots/NAME.png and embed it; on NotEnoughData write why instead."""
        import matplotlib.pyplot as plt

        self.add(f"#### {title}", "")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fig = draw()
        except NotEnoughData as err:
            self.add(f"Not enough data: {err}.", "")
            return False
        path = self.out / "plots" / f"{_slug(name)}.png"
        fig.savefig(path, dpi=PLOT_DPI, bbox_inches="tight")
        plt.close(fig)
        self.plots.append(path)
        self.add(f"![{title}](plots/{path.name})", "", caption, "")
        return True

    def copy_image(self, exp: Experiment, trial_id: str, src: Path) -> str:
        """Copy a trial's PNG to images/EXPERIMENT/TRIAL_ID/ (Ray's trial folder names hold ',' and '=')."""
        dst = self.out / "images" / _slug(exp.name) / _slug(str(trial_id)) / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        return dst.relative_to(self.out).as_posix()

    # -- sections ----------------------------------------------------------------------------
    def build(self) -> str:
        names = ", ".join(e.name for e in self.exps)
        self.add(f"# gentune report: {names}", "")
        self.section_experiments()
        self.section_results()
        self.section_pbt()
        self.section_samples()
        self.section_lab_plots()
        self.section_search_plots()
        self.section_answers()
        self.section_reruns()
        self.section_literature()
        self.section_notes()
        return "\n".join(self.lines).rstrip() + "\n"

    def section_experiments(self) -> None:
        self.add("## Experiments", "")
        rows = []
        for e in self.exps:
            t = e.trials
            counts = t["status"].value_counts().to_dict() if len(t) else {}
            rows.append({
                "experiment": e.name,
                "kind": e.kind,
                "datasets": ", ".join(sorted(t["dataset"].dropna().unique())) if len(t) else "n/a",
                "families": ", ".join(sorted(t["family"].dropna().unique())) if len(t) else "n/a",
                "trials": fmt.count(len(t)),
                **{s: fmt.count(counts.get(s, 0)) for s in STATUSES},
                "max kimg": fmt.kimg(e.max_kimg),
                "FID": fid_setup_text(t) if len(t) else "n/a",
            })
        self.add(fmt.table(rows), "")
        for e in self.exps:
            src = ("rebuilt from Ray Tune's records (works while the study runs)" if e.source == "ray"
                   else "read from the export files")
            extra = f"; grid over: {', '.join(e.space) or 'n/a'}, every cell trained the full budget"
            if not e.is_grid:
                s = e.search["search"]
                extra = (f"; ASHA on FID over kimg with grace {fmt.kimg(s.get('grace_kimg'))} kimg and reduction factor "
                         f"{s.get('reduction_factor')}; searched: {', '.join(e.space) or 'n/a'}")
                if s.get("scheduler") == "pbt":
                    extra = (f"; population-based training (PBT) of a population of {s.get('num_samples')} proposed by "
                             f"Optuna, every trial trained the full budget; searched: {', '.join(e.space) or 'n/a'}")
            self.add(f"- `{e.name}`: `{e.path}`, frames {src}{extra}.")
            running = int((e.trials["status"].isin(["running", "pending"])).sum()) if len(e.trials) else 0
            if running:
                self.add(f"  **Still running**: {running} trial(s) running or pending; numbers will change.")
        self.add("")
        self.add(f"**FID** in this report: {fid_setup_text(self.exps.trials)}. A FID depends on the feature network "
                 "(backbone) and on the number of samples (it is biased by 1/N): numbers made with different backbones "
                 "or sample counts are not comparable, and the `domain` backbone's numbers are not the literature's "
                 "Inception FID. Lower is better.", "")
        for e in self.exps:
            self.add(f"- `{e.name}`: {e.floor_text}.")
        self.add("")

    def section_results(self) -> None:
        self.add("## Results", "")
        for e in self.exps:
            r = ranked(e.trials)
            self.add(f"### Best trials of `{e.name}`", "")
            if len(r) == 0:
                self.add("Not enough data: no trial has a finite FID yet.", "")
                continue
            params = searched_params(e.trials, e.space) or [p for p in ("loss", "z_dim") if p in r]
            rows = []
            for rank, row in enumerate(r.head(10).to_dict("records"), 1):
                rows.append({
                    "rank": str(rank),
                    "trial": f"`{row['trial_id']}`",
                    "config": row["label"],
                    "status": row["status"],
                    **{p: fmt.param(row.get(p)) for p in params},
                    "kimg": fmt.kimg(row["kimg"]),
                    "best FID": fmt.fid(row["fid_best"]),
                    "final FID": fmt.fid(row["fid_final"]),
                    "wall time (s)": fmt.seconds(row.get("wall_time_s")),
                })
            more = f" (best 10 of {len(r)})" if len(r) > 10 else ""
            self.add(f"FID: {fid_setup_text(e.trials)}{more}; {e.floor_text}.", "", fmt.table(rows), "")
            failed = e.trials[~e.trials["trial_id"].isin(r["trial_id"])]
            if len(failed):
                items = [f"`{x.trial_id}` ({x.label}, {x.status}"
                         + (f": `{x.diverge_reason}`" if isinstance(x.diverge_reason, str) and x.diverge_reason else "") + ")"
                         for x in failed.itertuples()]
                self.add("Trials without a finite FID: " + "; ".join(items) + ".", "")

    def section_pbt(self) -> None:
        """Population-based training: the exploits, and the schedule of the best trial (tuner/study/pbt.py)."""
        from tuner.study.pbt import PBT_FIELDS, change_words, default_perturbation_kimg, read_exploits

        pbt = [e for e in self.exps if not e.is_grid and e.search["search"].get("scheduler") == "pbt"]
        if not pbt:
            return
        self.add("## Population-based training", "")
        for e in pbt:
            s = e.search["search"]
            every = s.get("perturbation_kimg") or default_perturbation_kimg(e.max_kimg)
            exploits = read_exploits(e.path)
            cloned = sorted({x["trial_id"] for x in exploits})
            self.add(f"### `{e.name}`", "",
                     f"A population of {fmt.trials(len(e.trials))}, ranked by FID every {fmt.kimg(every)} kimg; "
                     f"{len(exploits)} exploit(s): a trial in the bottom quarter continued from a top-quarter trial's "
                     f"checkpoint with its lr, lr_d_ratio and betas perturbed ({len(cloned)} trial(s) cloned at least once).", "")
            rows = [{"kimg": fmt.kimg(x.get("kimg")), "trial": f"`{x['trial_id']}`", "cloned": f"`{x['donor_id']}`",
                     "its FID": fmt.fid(x.get("trial_fid")), "donor's FID": fmt.fid(x.get("donor_fid")),
                     "new settings": change_words(x.get("donor", {}), x.get("new", {}), PBT_FIELDS)}
                    for x in exploits[:20]]
            if rows:
                more = f" (first 20 of {len(exploits)})" if len(exploits) > 20 else ""
                self.add(f"Exploits{more}:", "", fmt.table(rows), "")
            r = ranked(e.trials)
            h = e.history
            if len(r) and len(h) and "hp_lr" in h:
                best = r.iloc[0]["trial_id"]
                sched = h[h["trial_id"] == best].sort_values("kimg")
                rows = [{"kimg": fmt.kimg(x["kimg"]), "FID": fmt.fid(x["fid"]),
                         **{name: fmt.param(x.get(f"hp_{name}")) for name in PBT_FIELDS if f"hp_{name}" in sched},
                         "continued from": f"`{x['cloned_from']}`" if isinstance(x.get("cloned_from"), str) and x["cloned_from"] else ""}
                        for x in sched.to_dict("records")]
                self.add(f"The schedule of the best trial, `{best}` (the settings in force at each evaluation):", "",
                         fmt.table(rows), "")

    def section_samples(self) -> None:
        self.add("## Samples", "")
        self.add("Fixed-noise sample grids (the same latent vectors at every evaluation) of the best trials of each "
                 "experiment, at their first, middle and last evaluation.", "")
        for e in self.exps:
            r = ranked(e.trials).head(self.top)
            if len(r) == 0:
                continue
            self.add(f"### `{e.name}`", "")
            for row in r.to_dict("records"):
                grids = _evals(e.path / str(row["samples_dir"]), "kimg_")
                if not grids:
                    self.add(f"- {row['label']}: no sample grid found in `{row['samples_dir']}`.")
                    continue
                picks = list(dict.fromkeys([grids[0], grids[len(grids) // 2], grids[-1]]))
                cells = [_cell(f"{fmt.kimg(k)} kimg", self.copy_image(e, row["trial_id"], p), 180) for k, p in picks]
                self.add(f"**{row['label']}** (`{row['trial_id']}`, best FID {fmt.fid(row['fid_best'])}, {row['status']})", "",
                         "<table><tr>" + "".join(cells) + "</tr></table>", "")
        self.section_autoencoder_images()

    def section_autoencoder_images(self) -> None:
        t = self.exps.trials
        ae = t[t["family"].isin(["vae", "ae"])] if len(t) else t
        self.add("### VAE / AE: reconstructions, prior samples, interpolations", "")
        if len(ae) == 0:
            self.add("Not enough data: no VAE or AE trials in these experiments.", "")
            return
        self.add("At each trial's last evaluation. Reconstructions: rows alternate 8 test images and their "
                 "reconstructions. Prior samples: decoded z ~ N(0, I). Interpolations: 8 pairs of test images, "
                 "10 steps between their codes.", "")
        for e in self.exps:
            rows = ranked(e.trials[e.trials["family"].isin(["vae", "ae"])]).sort_values(["family", "z_dim", "fid_best"])
            for row in rows.head(12).to_dict("records"):
                folder = e.path / str(row["samples_dir"])
                cells = []
                for prefix, name in AUTOENCODER_IMAGES:
                    found = _evals(folder, prefix)
                    if found:
                        cells.append(_cell(name, self.copy_image(e, row["trial_id"], found[-1][1]), 200))
                if cells:
                    self.add(f"**{e.name}: {row['label']}** (FID {fmt.fid(row['fid_best'])})", "",
                             "<table><tr>" + "".join(cells) + "</tr></table>", "")
        scatters = []
        for e in self.exps:
            for row in e.trials[e.trials["family"].isin(["vae", "ae"])].to_dict("records"):
                found = _evals(e.path / str(row["samples_dir"]), "latent_kimg_")
                if found:
                    scatters.append(_cell(row["label"], self.copy_image(e, row["trial_id"], found[-1][1]), 260))
        self.add("### AE vs VAE latent space", "")
        if scatters:
            self.add("2-D latent codes of test images, coloured by class (trials with z_dim = 2).", "",
                     "<table><tr>" + "".join(scatters) + "</tr></table>", "")
        else:
            self.add("Not enough data: no VAE or AE trial with a 2-D latent space (z_dim = 2) saved a latent scatter.", "")

    def section_lab_plots(self) -> None:
        from analysis import plots as P

        t, h = self.exps.trials, self.exps.history
        setup = fid_setup_text(t)
        self.add("## Plots", "", "### The lab's five plots", "")
        self.plot("gan_losses", "GAN D/G losses by dataset and loss", lambda: P.plot_gan_losses(h, t),
                  "Critic and generator losses at each evaluation (mean over the steps since the previous one), one line "
                  "per GAN trial. Loss scales differ between losses (a WGAN critic loss is unbounded), so compare shapes, "
                  "not levels, across colours.")
        self.plot("gan_fid_by_config", "GAN FID by configuration", lambda: P.plot_gan_fid_by_config(t),
                  f"Best FID of every GAN trial ({setup}). Hatched bars: trials stopped early by ASHA or by divergence; "
                  "their FID is at a lower budget.")
        self.plot("vae_losses", "VAE loss components by latent size", lambda: P.plot_vae_losses(h, t),
                  "Total loss, reconstruction and KL at each VAE/AE trial's last evaluation; solid: training batches, "
                  "dotted: the first 1000 test images (held out).")
        self.plot("vae_fid_by_latent", "VAE FID by latent size", lambda: P.plot_vae_fid_by_latent(t),
                  f"Best FID of prior samples of every VAE/AE trial ({setup}).")
        self.plot("gan_vs_vae", "GAN vs VAE FID", lambda: P.plot_gan_vs_vae(t),
                  "Best FID per family and dataset (bars) and every trial's best FID (dots). The lab averaged over "
                  "configurations; the best trial is what a search delivers.")

    def section_search_plots(self) -> None:
        from analysis import plots as P

        t, h = self.exps.trials, self.exps.history
        self.add("### The search", "")
        rungs = {e.name: _rungs(e) for e in self.exps if not e.is_grid}
        self.plot("learning_curves", "Learning curves", lambda: P.plot_learning_curves(h, t, rungs=rungs),
                  "FID at every evaluation of every trial, one panel per experiment. X: where ASHA stopped a trial "
                  "(pruned); red triangle: last finite FID of a diverged trial; thick black: the experiment's best trial; "
                  "dashed verticals: ASHA's rungs.")
        self.plot("compute", "Compute accounting", lambda: P.plot_compute(self.exps),
                  "Left: kimg trained by all trials of each experiment (sum of each trial's kimg reached) against a grid "
                  "that trains as many trials for the full budget. Right: best FID found so far as the experiment spends "
                  "kimg; evaluations are taken in wall-clock order (Ray's report timestamps) and each adds the kimg its "
                  "trial trained since its previous evaluation.")
        from analysis.frames import seed_groups

        if seed_groups(self.exps):
            self.plot("seed_spread", "Best FID vs compute over seeds", lambda: P.plot_seed_spread(self.exps),
                      "Studies run with several seeds (experiments that differ only in --seed): the median of their "
                      "best FID so far against cumulative kimg and the range over seeds (as Lucic et al. 2018, Fig. 5); "
                      "other experiments as single lines.")
        for e in self.exps:
            et, eh = e.trials, e.history
            tag = _slug(e.name)
            if len(self.exps) > 1:
                self.add(f"#### `{e.name}`", "")
            self.plot(f"fid_vs_params-{tag}", f"FID vs each hyperparameter ({e.name})",
                      lambda et=et, e=e: P.plot_fid_vs_params(et, e.space),
                      f"Best FID of each trial ({fid_setup_text(et)}) against every parameter the experiment varied; "
                      "log axes for lr, clip_value, gp_lambda, z_dim and kl_beta. Pruned trials (X) have a FID at a lower "
                      "budget than completed ones (o). 'n/a': conditional parameters absent from a trial (clip_value only "
                      "for wgan, gp_lambda only for wgan-gp).")
            if e.study is not None:
                caption = self._importance_caption(e)
                self.plot(f"importance-{tag}", f"Hyperparameter importance ({e.name})",
                          lambda e=e: P.plot_importance(e.study), caption)
            else:
                self.add(f"#### Hyperparameter importance ({e.name})", "",
                         "Not enough data: no Optuna study (a grid has no sampler to analyse, or optuna.journal is missing).", "")
            for family in ("gan", "vae"):
                if (et["family"] == family).sum() >= 2:
                    self.plot(f"parallel-{family}-{tag}", f"Best {family.upper()} trials across the searched parameters ({e.name})",
                              lambda et=et, e=e, family=family: P.plot_parallel_coordinates(
                                  et, family=family, top=10, params=e.space),
                              "Each line is one trial, each vertical axis one parameter normalised to the range tried "
                              "(log for log-sampled parameters), with its extreme values printed; colour is the best FID "
                              "(dark = better). Grey: trials outside the top 10. 'n/a': parameter absent in that trial.")
            if (et["family"] == "gan").any():
                self.plot(f"critic-{tag}", f"Critic outputs of the best GAN trials ({e.name})",
                          lambda et=et, eh=eh: P.plot_critic_outputs(eh, et, top=self.top),
                          "Mean raw critic scores on real images, D(x), and on generated ones, D(G(z)), at each evaluation "
                          "(averaged over the steps since the previous one). No sigmoid is applied; the scale depends on "
                          "the loss. A gap that keeps widening means the critic is winning; both near each other and "
                          "stable is the healthy case.")
            family = "gan" if (et["family"] == "gan").any() else None
            self.plot(f"diversity-{tag}", f"Sample diversity ({e.name})",
                      lambda et=et, eh=eh, family=family: P.plot_diversity(eh, et, top=self.top, family=family),
                      "Left: share of generated samples the domain classifier assigns to each class, for the best trials at "
                      "their best evaluation, next to the real test split. Right: every trial's classes covered and KL "
                      "from uniform at its best evaluation; mode collapse shows in the top-left corner: few classes "
                      "covered, high KL.")

    def _importance_caption(self, e: Experiment) -> str:
        from analysis.frames import param_importances

        try:
            _, facts = param_importances(e.study)
        except NotEnoughData:
            return ""
        note = " Fewer than 10 trials: indicative only." if facts["complete_trials"] < 10 else ""
        return (f"Method: {facts['method']}, target quantile {facts['target_quantile']:.2f}, on the "
                f"{facts['complete_trials']} COMPLETE trials (trained the full budget) of the study's "
                f"{facts['all_trials']}; ASHA-pruned, diverged and errored trials are excluded. A conditional parameter "
                f"(clip_value, gp_lambda) is scored on the trials where it exists.{note}")

    def section_answers(self) -> None:
        self.add("## Answers to the lab's questions", "")
        for i, a in enumerate(answer_all(self.exps), 1):
            self.add(f"### Q{i}: {a.title}", "", a.markdown, "")

    def section_reruns(self) -> None:
        from analysis.final import protocol_groups, rerun_summary

        found = [(e, e.path / "rerun.parquet") for e in self.exps if (e.path / "rerun.parquet").is_file()]
        self.add("## Re-runs with other seeds", "")
        if not found:
            self.add("Not enough data: no rerun.parquet (run `python -m analysis.rerun EXPERIMENT_DIR --top K --seeds S`).", "")
            return
        for e, path in found:
            groups = protocol_groups(pd.read_parquet(path))
            for protocol, part in groups:
                summary, text = rerun_summary(e.trials, part)
                title = f"### `{e.name}`" + (f" ({protocol})" if protocol and len(groups) > 1 else "")
                self.add(title, "", (f"Protocol: {protocol}." if protocol else "Protocol: each trial's own."), "", text, "")

    def section_literature(self) -> None:
        from analysis.literature import literature_section

        found = [(e, e.path / "rerun.parquet") for e in self.exps if (e.path / "rerun.parquet").is_file()]
        self.add("## Against the literature", "")
        if not found:
            self.add("Not enough data: no final evaluation (run `python -m analysis.rerun EXPERIMENT_DIR --top 1 --final`).", "")
            return
        for e, path in found:
            self.add(literature_section(e.name, e.trials, pd.read_parquet(path)), "")

    def section_notes(self) -> None:
        notes = [n for e in self.exps for n in e.notes]
        if notes:
            self.add("## Notes", "", *[f"- {n}" for n in notes], "")


def _cell(title: str, src: str, width: int) -> str:
    """One cell of an HTML table of images (markdown tables cannot size images)."""
    return f'<td><strong>{title}</strong><br><img src="{src}" width="{width}"></td>'


def _evals(folder: Path, prefix: str) -> list[tuple[float, Path]]:
    """(kimg, path) of the PNGs PREFIX<kimg>.png in folder, by kimg."""
    out = []
    if folder.is_dir():
        for p in folder.glob(f"{prefix}*.png"):
            m = re.fullmatch(re.escape(prefix) + r"([0-9.]+)\.png", p.name)
            if m:
                out.append((float(m.group(1)), p))
    return sorted(out)


def _rungs(e: Experiment) -> list[float]:
    s = e.search["search"]
    grace, rf = float(s.get("grace_kimg") or 0), float(s.get("reduction_factor") or 0)
    if grace <= 0 or rf < 2:
        return []
    out, r = [], grace
    while r < e.max_kimg - 1e-9:
        out.append(r)
        r *= rf
    return out


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "experiment"


def write_report(paths: list[str | Path], out: str | Path, top: int = 3, rebuild: bool | None = None) -> Path:
    """Load the experiments, write OUT/report.md and its images; return the report's path."""
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out)
    exps = load_experiments(paths, rebuild=rebuild)  # refuses what it cannot report (e.g. a classifier mix) before OUT exists
    out.mkdir(parents=True, exist_ok=True)
    report = Report(exps, out, top=top)
    text = report.build()
    path = out / "report.md"
    write_whole(path, lambda tmp: tmp.write_text(text))
    return path


REMOTE_COPIES: dict[str, str] = {}  # local copy -> the s3:// experiment it was made from (shown in the report)


def expand_experiments(paths: list[str], copies: str | Path | None = None) -> list[str]:
    """A folder that is not an experiment but holds experiments (STORAGE_PATH) stands for all of them.
    An experiment in remote storage (s3://BUCKET/PREFIX/NAME) is copied, without its checkpoints, into
    the folder `copies` (a temporary folder of main) and read from there."""
    out = []
    for path in paths:
        if "://" in path:
            from tuner.study.remote import check_remote_storage, local_copy

            check_remote_storage(path, field="EXPERIMENT_DIR")
            name = path.rstrip("/").rsplit("/", 1)[-1]
            local = str(local_copy(path, Path(copies) / str(len(out)) / name))
            REMOTE_COPIES[str(Path(local).resolve())] = path.rstrip("/")
            out.append(local)
            continue
        p = Path(path).expanduser()
        inner = sorted(str(c) for c in p.iterdir() if (c / "search_config.json").is_file()) \
            if p.is_dir() and not (p / "search_config.json").is_file() else []
        out.extend(inner or [path])
    return out


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m analysis.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiments", nargs="+", metavar="EXPERIMENT_DIR",
                   help="experiment folders (STORAGE_PATH/NAME, local or s3://BUCKET/PREFIX/NAME), or a folder holding several (e.g. a study's seeds)")
    p.add_argument("--out", required=True, metavar="REPORT_DIR", help="folder for report.md and its images")
    p.add_argument("--top", type=int, default=3, help="best trials per experiment shown with samples and curves [3]")
    p.add_argument("--rebuild", action=argparse.BooleanOptionalAction, default=None,
                   help="rebuild the frames from Ray's records (default: when experiment_state exists) or read the exports")
    args = p.parse_args(argv)
    from tuner.config import ConfigError
    from tuner.config.paths import output_folder

    import tempfile

    try:
        output_folder("out", args.out)  # before anything is created or read
        with tempfile.TemporaryDirectory(prefix="gentune-report-") as copies:  # experiments in remote storage
            path = write_report(expand_experiments(args.experiments, copies), args.out, top=args.top, rebuild=args.rebuild)
            if REMOTE_COPIES:  # the report names the experiments where they are stored, not their temporary copies
                text = path.read_text()
                for local, uri in REMOTE_COPIES.items():
                    text = text.replace(local, uri)
                write_whole(path, lambda tmp: tmp.write_text(text))
    except (FileNotFoundError, RuntimeError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
