"""Metrics layer: how good a generator's images are. Feature backbones (Inception, the domain
classifier), the Fréchet distance and its cached real statistics, class coverage, and the assets a
worker needs to score (metrics_cache). Imports config and data only."""
