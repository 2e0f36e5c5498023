"""Training layer: one trial's path from a TrainConfig to its records. trial (the nets, optimisers and
precision of one run) -> steps (one optimisation step per family) -> loop (evaluate, checkpoint, report)
-> evaluate (FID and samples); fused and pack run K same-shape configs as one fused net. Imports
config, data and metrics; knows nothing of Ray or Optuna."""
