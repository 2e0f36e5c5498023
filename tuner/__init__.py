"""gentune: the search driver, the single-trial trainer and the metrics."""
