"""Study layer: Ray Tune and Optuna around the training layer. driver (parse, start Ray, build and run
the Tuner), worker (the trainable), optuna_bridge (the searcher), packing (fused packs as trials),
resume, storage and staging (the experiment folder and its guards), console, watch (sample grids to
Optuna artifacts)."""
