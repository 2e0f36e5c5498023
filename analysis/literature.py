"""Published FIDs to compare the final evaluation with.

Lucic, Kurach, Michalski, Gelly, Bousquet. "Are GANs Created Equal? A Large-Scale Study."
NeurIPS 2018 (arXiv:1711.10337), Table 2: the FID (mean ± std) of each model's best
hyperparameters found by the search, over several retrainings.

Protocol of that table, as gentune's issue 13 states it: FID of 10,000 generated samples against
the 10,000 test images, with Inception features; training of about 15.6k steps at batch 64
(~1000 kimg); a search budget of 100 trials in a wide space plus 50 in a narrow one, per model.
Only the mean and std are transcribed here (MNIST has the means only in the issue).
"""

from __future__ import annotations

CITATION = ('Lucic et al. 2018, "Are GANs Created Equal? A Large-Scale Study", NeurIPS 2018 '
            "(arXiv:1711.10337), Table 2")
MODELS = ("MM GAN", "NS GAN", "LSGAN", "WGAN", "WGAN-GP", "DRAGAN", "BEGAN", "VAE")
# dataset -> model -> (mean FID, std or None where not transcribed)
TABLE2: dict[str, dict[str, tuple[float, float | None]]] = {
    "fashion-mnist": dict(zip(MODELS, [(29.6, 1.6), (26.5, 1.6), (30.7, 2.2), (21.5, 1.6), (24.5, 2.1),
                                       (27.7, 1.2), (22.9, 0.9), (58.7, 1.2)])),
    "mnist": dict(zip(MODELS, [(9.8, None), (6.8, None), (7.8, None), (6.7, None), (20.3, None),
                               (7.6, None), (13.1, None), (23.8, None)])),
}
PROTOCOL = {
    "fid_backbone": "inception",
    "fid_samples": 10000,  # generated samples
    "real_images": "10,000 test images",
    "budget": "~15.6k steps at batch 64 (~1000 kimg)",
    "search": "100 wide + 50 narrow trials per model",
}
# gentune's loss -> the model of Table 2 trained with the same objective (bce is the non-saturating
# GAN; hinge has no row in the table)
LOSS_TO_MODEL = {"bce": "NS GAN", "lsgan": "LSGAN", "wgan": "WGAN", "wgan-gp": "WGAN-GP"}


def ema_text(emas, seeds: list[int], runs: int) -> str:
    """The EMA generator's FIDs: mean ± std, naming the seeds when only some runs scored an EMA."""
    from analysis import fmt

    if not len(emas):
        return "n/a (no EMA)"
    text = fmt.fid(emas.mean()) + (f" ± {fmt.fid(emas.std())}" if len(emas) > 1 else "")
    if len(emas) < runs:
        text += f" (only seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})"
    return text


def model_of(family: str, loss: str | None) -> str | None:
    """Table 2's row for a gentune config, or None when the table has none."""
    if family == "vae":
        return "VAE"
    if family == "gan":
        return LOSS_TO_MODEL.get(loss or "hinge")
    return None


def comparable(fid_backbone: str, fid_samples: int, dataset: str) -> str | None:
    """None when a final-evaluation row is measured as Table 2 is; else why it is not."""
    reasons = []
    if dataset not in TABLE2:
        reasons.append(f"Table 2 has no {dataset}")
    if fid_backbone != PROTOCOL["fid_backbone"]:
        reasons.append(f"{fid_backbone} features, not Inception: the numbers are on another scale")
    if int(fid_samples) != PROTOCOL["fid_samples"]:
        reasons.append(f"{int(fid_samples)} samples, not 10000: FID is biased by about 1/N")
    return "; ".join(reasons) or None


def literature_section(name: str, trials, runs) -> str:
    """The report's "Against the literature" text for one experiment: the final evaluation's mean ± std
    per config and protocol, Table 2 for the dataset, both protocols, and a placement among Table 2's
    models only for rows measured as Table 2 is (others say why they are not ranked)."""
    import math

    import pandas as pd

    from analysis import fmt
    from analysis.final import with_protocol_columns

    runs = runs[runs["fid_backbone"].notna()] if "fid_backbone" in runs else runs.iloc[0:0]
    if runs.empty:
        return (f"### `{name}`\n\nNot enough data: rerun.parquet has no row with its protocol recorded "
                "(run `python -m analysis.rerun EXPERIMENT_DIR --top 1 --final`).\n")
    labels = trials.set_index("trial_id")["label"].to_dict() if "label" in trials else {}
    rows, placements, datasets = [], [], set()
    runs = with_protocol_columns(runs)  # a domain FID's classifier is part of its protocol, and so is a VAE's sampler
    groups = runs.groupby(["trial_id", "fid_backbone", "fid_samples", "max_kimg", "classifier", "latent_sampler", "changes"],
                          sort=False, dropna=False)
    for (trial_id, backbone, samples, kimg, classifier, sampler, changes), g in groups:
        label = labels.get(trial_id, trial_id) + (f", re-trained with {changes}" if changes else "")
        first = g.iloc[0]
        dataset, family = str(first.get("dataset")), str(first.get("family"))
        loss = first.get("loss") if isinstance(first.get("loss"), str) else None
        datasets.add(dataset)
        fids = pd.to_numeric(g["fid_final"], errors="coerce")
        ema_all = pd.to_numeric(g["fid_ema_final"], errors="coerce") if "fid_ema_final" in g else pd.Series(math.nan, g.index)
        emas, ema_seeds = ema_all.dropna(), sorted(int(s) for s in g.loc[ema_all.notna(), "seed"])
        mean, std = fids.mean(), fids.std()
        model = model_of(family, loss)
        published = TABLE2.get(dataset, {}).get(model) if model else None
        why = comparable(backbone, samples, dataset)
        if why is None and model is None:
            why = f"Table 2 has no model trained with the {loss or family} objective"
        if why is None and not all(math.isfinite(f) for f in fids):
            why = "a seed diverged"
        if why is None:
            order = sorted([m for m, _ in TABLE2[dataset].values()] + [mean])
            place = order.index(mean) + 1
            gap = "" if float(kimg) == 1000 else f"; its budget is {fmt.kimg(kimg)} kimg, Table 2's ~1000"
            if sampler == "gmm":
                gap += ("; its samples come from an ex-post Gaussian mixture of its codes (Ghosh et al. 2020), "
                        "Table 2's VAE samples its N(0, I) prior")
            placements.append(f"- {label}: FID {fmt.fid(mean)} would place {place} of "
                              f"{len(order)} among Table 2's {dataset} models ({model} there: {fmt.fid(published[0])}){gap}.")
        else:
            placements.append(f"- {label} ({backbone}, {fmt.count(samples)} samples): not ranked "
                              f"against Table 2: {why}.")
        rows.append({
            "config": label,
            "trial": f"`{trial_id}`",
            "protocol": f"{backbone}, {fmt.count(samples)} samples, {fmt.kimg(kimg)} kimg"
                        + (f", classifier {classifier}" if isinstance(classifier, str) else "")
                        + (", latent sampler gmm" if sampler == "gmm" else ""),
            "precision": ", ".join(sorted({str(p) for p in g["precision"].dropna()})) or "n/a",
            "seeds": ", ".join(str(int(s)) for s in sorted(g["seed"])),
            "FID, last checkpoint (mean ± std)": f"{fmt.fid(mean)} ± {fmt.fid(std)}",
            "EMA FID (mean ± std)": ema_text(emas, ema_seeds, len(g)),
            "Table 2 model": model or "none",
            "Table 2 FID": (f"{fmt.fid(published[0])} ± {fmt.fid(published[1])}" if published and published[1] is not None
                            else fmt.fid(published[0]) if published else "n/a"),
        })
    lines = [f"### `{name}`", "", fmt.table(rows), ""]
    for dataset in sorted(datasets & set(TABLE2)):
        lines += [f"{CITATION}, {dataset}:", "",
                  fmt.table([{"model": m, "FID (mean ± std)": f"{fmt.fid(v[0])} ± {fmt.fid(v[1])}" if v[1] is not None
                              else f"{fmt.fid(v[0])} (std not transcribed)"} for m, v in TABLE2[dataset].items()]), ""]
    search = f"{fmt.trials(len(trials))} in this study" if len(trials) else "n/a"
    lines += [
        "Protocols:", "",
        f"- Table 2: {PROTOCOL['fid_samples']} generated samples vs {PROTOCOL['real_images']}, Inception features, "
        f"{PROTOCOL['budget']}, search {PROTOCOL['search']}.",
        f"- Here: each row's backbone, samples (vs as many test images) and budget as listed; FID of the LAST "
        f"checkpoint of each run (no checkpoint is picked by its test-set score); Inception runs in fp32 whatever the "
        f"training precision; search {search}.",
        "- Where they differ: rows with another backbone or sample count are on another scale and are not ranked; "
        "the search budgets differ whenever this study ran fewer than 150 trials; std here is the sample standard "
        "deviation over this row's seeds.", "",
        "Placement:", "", *placements, ""]
    return "\n".join(lines)
