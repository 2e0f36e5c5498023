"""Results layer: a finished or interrupted study's folder -> trials.csv, trials.parquet,
history.parquet, best.json and the console summary (`python -m tuner.results.exports DIR`)."""
