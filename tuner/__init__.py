"""gentune's tuner, in layers (each imports only the ones before it; README "Layout"): config
(config, cli, schema, paths) -> train and metrics (trial, steps, checkpoint, evaluate, loop, fid/, ...)
-> study (space, optuna_bridge, worker, resume, study, ...) -> results (exports, and search.py, the script)."""
