"""optuna-dashboard over a study stored in S3, with its sample grids, in one command:

    python -m tuner.study.dashboard s3://BUCKET/PREFIX/NAME [--host 127.0.0.1] [--port 8080]

optuna-dashboard's own command reads a local journal and a local artifact folder
(`--artifact-dir`). This one reads the journal the driver keeps in the experiment storage
(tuner/study/remote.py: JournalMirror), refreshed every few seconds while the study runs, and serves
the trials' sample grids from EXPERIMENT/artifacts in S3 through Optuna's Boto3ArtifactStore, so
nothing is copied by hand and any machine with the AWS credentials can run it (the head is not
needed). The endpoint and credentials come from the environment, as for the study. A local
experiment folder works too (its optuna.journal and artifacts/).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from pathlib import Path

from tuner.config.atomic import write_whole
from tuner.config.cli import ArgumentParser, one_line
from tuner.config import ConfigError

REFRESH_S = 5.0


def follow(uri: str, local: Path, stop: threading.Event, every_s: float = REFRESH_S) -> None:
    """Keep `local` a copy of the journal at `uri` (replaced whole when the remote one has grown)."""
    from tuner.study.remote import complete_lines, read_remote

    while not stop.wait(every_s):
        try:
            data = complete_lines(read_remote(uri) or b"")
        except Exception as err:  # noqa: BLE001 (the next refresh tries again)
            print(f"gentune: could not refresh the journal from {uri}: {one_line(err)}", file=sys.stderr, flush=True)
            continue
        if len(data) > local.stat().st_size:
            write_whole(local, lambda tmp: tmp.write_bytes(data), fsync=False)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m tuner.study.dashboard", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment_dir", metavar="EXPERIMENT_DIR", help="s3://BUCKET/PREFIX/NAME (or a local STORAGE_PATH/NAME)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on [127.0.0.1: this machine only]")
    p.add_argument("--port", type=int, default=8080, help="port [8080]")
    args = p.parse_args(argv)
    exp = args.experiment_dir.rstrip("/")
    try:
        try:
            from optuna_dashboard import run_server
        except ImportError:
            raise ConfigError("optuna-dashboard is not installed: allowed after pip install optuna-dashboard") from None
        from tuner.study.optuna_bridge import make_storage
        from tuner.study.watch import artifact_location, artifact_store

        stop = threading.Event()
        with tempfile.TemporaryDirectory(prefix="gentune-dashboard-") as tmp:
            if "://" in exp:
                from tuner.study.remote import check_remote_storage, complete_lines, read_remote

                check_remote_storage(exp, field="EXPERIMENT_DIR")
                data = read_remote(f"{exp}/optuna.journal")
                if data is None:
                    raise ConfigError(f"invalid EXPERIMENT_DIR={exp!r}: it holds no optuna.journal; "
                                      "allowed the experiment folder of a gentune study")
                journal = Path(tmp) / "optuna.journal"
                journal.write_bytes(complete_lines(data))
                threading.Thread(target=follow, args=(f"{exp}/optuna.journal", journal, stop), daemon=True).start()
            else:
                journal = Path(exp) / "optuna.journal"
                if not journal.is_file():
                    raise ConfigError(f"invalid EXPERIMENT_DIR={exp!r}: it holds no optuna.journal; "
                                      "allowed the experiment folder of a gentune study")
            store = artifact_store(artifact_location(exp))
            print(f"gentune: optuna-dashboard for {exp} on http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
            try:
                run_server(make_storage(str(journal)), host=args.host, port=args.port, artifact_store=store)
            finally:
                stop.set()
    except ConfigError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
