"""gentune analysis: load a finished (or running) experiment, draw plots, write the report.

Command line:

    python -m analysis.report EXPERIMENT_DIR [EXPERIMENT_DIR ...] --out REPORT_DIR
    python -m analysis.rerun EXPERIMENT_DIR --top 3 --seeds 3      # then re-run the report
    python -m analysis.rerun EXPERIMENT_DIR --top 1 --final        # the final evaluation (1000 kimg, Inception, 10k)

Notebook:

    from analysis.frames import load_experiments
    from analysis import plots, answers

    exps = load_experiments(["~/gentune_results/study", "~/gentune_results/lab1"])
    exps.trials, exps.history          # pandas frames of all experiments, with an `experiment` column
    exp = exps["study"]                # one Experiment: .trials .history .best .search .study .space
    exp.study                          # the optuna.Study (None for a grid)

    plots.plot_learning_curves(exps.history, exps.trials)        # each plot_* returns a Figure
    plots.plot_fid_vs_params(exp.trials, exp.space)
    plots.plot_importance(exp.study)
    plots.plot_compute(exps)

    for a in answers.answer_all(exps): # the lab's four questions
        print(a.title, a.markdown)     # a.data: the numbers behind the text, as DataFrames / dicts

Modules: `frames` (loading, derived tables), `plots` (one function per figure), `answers` (Q1-Q4 as
data and text), `fmt` (number formats), `report` (report.md), `rerun` (re-training the best configs
with other seeds; its command line), `final` (the re-runs as one Ray Tune run, protocol-keyed rows),
`literature` (Lucic et al. 2018's Table 2 and the report's "Against the literature" text). A plot or answer the data cannot support raises / says `NotEnoughData` with the
reason. FIDs made with different backbones or sample counts are never compared.
"""
