"""The names the models' registries use, importable without torch (the config layer and every
command line read them before any model is built)."""

D_NORMS = ("none", "batch", "spectral")  # discriminator normalisation (models/gan.py)
OPTIMIZERS = ("adam", "rmsprop")  # a loss's published optimiser (models/losses.py)
# The config fields whose default depends on the loss (None in a TrainConfig = the loss's own value).
LOSS_KEYS = ("optimizer", "lr", "beta1", "beta2", "n_critic", "clip_value", "gp_lambda")
