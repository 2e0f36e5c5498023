"""The study's script: `python tuner/search.py [flags]` locally, `ray submit cluster.yaml
tuner/search.py -- --address auto [flags]` on a Ray cluster. The driver is tuner/study/driver.py;
`python tuner/search.py --help` lists every flag.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script (ray submit): import the package, not tuner/*.py as top-level modules
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

from tuner.study import driver as study  # noqa: E402
from tuner.config.cli import one_line  # noqa: E402
from tuner.study.location import is_remote, upload  # noqa: E402
from tuner.config import ConfigError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Flags -> a study run to its end (tuner/study/driver.py) -> its exports and a summary. Exit 2 with one
    `error:` line on bad input (nothing started), 1 when the results disk filled up during the run."""
    try:
        search, base, overrides = study.parse(argv)
        local = study.run(search, base, overrides)
        from tuner.results.exports import summarize, write_exports

        frames = write_exports(local, allow_shrink=search.allow_shrink)
        if is_remote(search):  # best.json names the checkpoint and samples in the experiment storage
            from tuner.results.exports import relocate_best

            relocate_best(local, search.experiment_dir, frames)
        upload(search, ["trials.csv", "trials.parquet", "history.parquet", "best.json", "optuna.journal"])
        print(summarize(frames, search.experiment_dir))
        return 0
    except ConfigError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    except Exception as err:
        from tuner.data import DataError

        if isinstance(err, DataError):
            print(f"error: {one_line(err)}", file=sys.stderr)
            return 2
        from tuner.study.storage import StorageFull

        if isinstance(err, StorageFull):  # a fault during the run, not bad input: exit 1
            print(f"error: {one_line(err)}", file=sys.stderr)
            return 1
        raise

if __name__ == "__main__":
    sys.exit(main())
