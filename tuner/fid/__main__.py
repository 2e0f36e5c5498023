"""python -m tuner.fid: see tuner/fid/cli.py."""

import sys

from tuner.fid.cli import main

sys.exit(main())
