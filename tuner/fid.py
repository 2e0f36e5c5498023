"""`python -m tuner.fid REAL GENERATED [flags]`: one FID from the command line (tuner/metrics/fid/cli.py)."""

import sys

from tuner.metrics.fid.cli import main

if __name__ == "__main__":
    sys.exit(main())
