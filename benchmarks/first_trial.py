"""Time to the first trial: how long a new user waits, from the command, for the no-flag study's first trial.

    python benchmarks/first_trial.py            # real run: 3 rounds of `python tuner/search.py`, 1-2 min
    python benchmarks/first_trial.py --smoke    # tiny sizes

Each round runs `python tuner/search.py` with no flags but a fresh --storage-path, in its own session with
its own Ray temp folder and, unless --warm-cache, an empty $GENTUNE_CACHE (a new user: no real-image
statistics cached; the domain classifier ships in the package), and reads its output as it comes. It
times, from the start of the command, the first `[gentune] trial ... started` line (Tune started the
first trial's worker with its config; the checks, the real-image statistics of a new cache and Ray's
start come before it). Then it presses Ctrl-C (SIGINT to the session), waits for the driver, and ends
anything the run left. The dataset must be present (GENTUNE_DATA_MIRROR, or torchvision's cache): this
measures gentune and Ray, not a download. Target: the first trial starts within 30 s of the command.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (it puts the repository on sys.path)

TARGET_S = 30.0
STARTED = re.compile(r"^\[gentune\] trial \S+ started")
SMOKE_FLAGS = ["--train-limit", "256", "--g-width", "8", "--d-width", "8", "--batch-size", "16", "--fid-samples", "64",
               "--max-kimg", "0.5", "--grace-kimg", "0.25", "--ranges", "g_width=8:8", "d_width=8:8",
               "batch_size=16,32", "--no-warm-start", "--num-samples", "1"]


def build_parser():
    p = common.parser(__doc__)
    p.add_argument("--rounds", type=int, default=3, help="runs of the command [default: 3]")
    p.add_argument("--warm-cache", action="store_true",
                   help="use the machine's cache ($GENTUNE_CACHE or ~/.cache/gentune) instead of an empty one")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds to wait for the first trial before pressing Ctrl-C [default: 300]")
    return p


def one_round(flags: list[str], cache: Path | None, timeout: float) -> float | None:
    root = common.ROOT
    work = Path(tempfile.mkdtemp(prefix="gentune-bench-first-"))
    ray_tmp = Path(tempfile.mkdtemp(prefix="gtft", dir="/tmp"))  # short: Ray's socket paths
    env = dict(os.environ, RAY_TMPDIR=str(ray_tmp), PYTHONUNBUFFERED="1")
    if cache is not None:
        env["GENTUNE_CACHE"] = str(cache)
    command = [sys.executable, str(root / "tuner" / "search.py"), "--storage-path", str(work), "--name", "first",
               *flags]
    marks: dict[str, float] = {}
    lines: list[str] = []
    started = threading.Event()
    t0 = time.monotonic()
    proc = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if "started" not in marks and STARTED.search(line):
                marks["started"] = time.monotonic() - t0
                started.set()
        started.set()  # the command ended

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        started.wait(timeout)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # a user's Ctrl-C
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
    finally:
        for pid in common.processes_under(ray_tmp):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        reader.join(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    if "started" not in marks:
        print("no trial started; the command's output ended with:\n" + "".join(lines[-40:]), file=sys.stderr)
    return marks.get("started")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.timeout <= 0:
        parser.error("--rounds must be >= 1 and --timeout > 0")  # exit 2
    if args.smoke:
        args.rounds = 1
    flags = SMOKE_FLAGS if args.smoke else []
    rounds: list[float] = []
    load = common.LoadMonitor()
    with load:
        for _ in range(args.rounds):
            cache = None if args.warm_cache else Path(tempfile.mkdtemp(prefix="gentune-bench-cache-"))
            try:
                seconds = one_round(flags, cache, args.timeout)
            finally:
                if cache is not None:
                    shutil.rmtree(cache, ignore_errors=True)
            if seconds is None:
                return 1
            rounds.append(seconds)
            print(f"round {len(rounds)}: the first trial started {seconds:.1f} s after the command", flush=True)
    blocks = [
        f"`python tuner/search.py` with no flags but --storage-path/--name (the no-flag study{', smoke sizes' if args.smoke else ''}), "
        f"{'the machine cache' if args.warm_cache else 'an empty $GENTUNE_CACHE'}; seconds from the command's start "
        "to its first `[gentune] trial ... started` line.",
        common.table(["round", "first trial started (s)"], [[i + 1, s] for i, s in enumerate(rounds)]),
        common.table(["measure", "value", "target", "verdict"], [
            ["first trial started, median of rounds", f"{common.median(rounds):.1f} s ({common.spread(rounds)})",
             f"≤ {TARGET_S:g} s", common.verdict(common.median(rounds) <= TARGET_S)],
        ]),
    ]
    common.publish(common.section("first_trial", args.smoke, blocks, load), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
