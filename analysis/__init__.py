"""gentune analysis: load a finished (or running) experiment, draw plots, write the report."""
