"""What every benchmark shares: the machine description, tables, timing and the BENCHMARKS.md section.

Each benchmark prints one section (title, date, machine, exact command, tables, targets) and, for a
real run, appends it to BENCHMARKS.md. A smoke run (`--smoke`) never touches BENCHMARKS.md: it
appends to $GENTUNE_BENCH_REPORT when that is set (the smoke test points it at a temporary file),
else nowhere. `--report PATH` overrides both.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python benchmarks/NAME.py` from anywhere imports the package
    sys.path.insert(0, str(ROOT))

BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
RESULTS_DIR = ROOT / "benchmarks" / "results"
REPORT_ENV = "GENTUNE_BENCH_REPORT"
NO_GPU = "not measured: no GPU on this machine"
# Environment variables that change what a benchmark measures; the printed command includes them.
COMMAND_ENV = ("GENTUNE_DATA_MIRROR", "GENTUNE_CACHE", "GENTUNE_DATA_ROOT", REPORT_ENV)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true",
                   help=f"tiny sizes (< 20 s), for tests; never appends to BENCHMARKS.md (only to ${REPORT_ENV} if set)")
    p.add_argument("--report", default=None,
                   help="append the section to this file instead [default: BENCHMARKS.md; with --smoke: $" + REPORT_ENV + "]")
    p.add_argument("--no-report", action="store_true", help="print only, append nowhere")
    return p


def report_path(args: argparse.Namespace) -> Path | None:
    if args.no_report:
        return None
    if args.report:
        return Path(args.report)
    if args.smoke:
        env = os.environ.get(REPORT_ENV)
        return Path(env) if env else None
    return BENCHMARKS_MD


# ------------------------------------------------------------------------------------------
# machine, command, date


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, str]:
    import torch

    if torch.cuda.is_available():
        device = "cuda: " + torch.cuda.get_device_name(0)
    else:
        device = "cpu (no CUDA device visible)"
    return {
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device,
    }


def command() -> str:
    env = " ".join(f"{k}={shlex.quote(os.environ[k])}" for k in COMMAND_ENV if os.environ.get(k))
    script = os.path.relpath(sys.argv[0], ROOT) if Path(sys.argv[0]).exists() else sys.argv[0]
    cmd = shlex.join(["python", script, *sys.argv[1:]])
    return f"{env} {cmd}".strip()


def now() -> str:
    return dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def stamp() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S")


class LoadMonitor:
    """Samples the 1-minute load average every few seconds, to say how contended the machine was."""

    def __init__(self, every_s: float = 5.0) -> None:
        self.samples: list[float] = [os.getloadavg()[0]]
        self._every = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> "LoadMonitor":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.samples.append(os.getloadavg()[0])

    def describe(self) -> str:
        cores = os.cpu_count() or 1
        mean, peak = statistics.fmean(self.samples), max(self.samples)
        verdict = "contended: other processes shared the cores" if mean > cores * 1.05 else "no heavy contention seen"
        return f"1-min load average mean {mean:.1f}, max {peak:.1f} on {cores} cores ({verdict})"


# ------------------------------------------------------------------------------------------
# numbers and tables


def median(xs) -> float:
    return statistics.median(list(xs))


def spread(xs) -> str:
    xs = list(xs)
    return f"{fmt(min(xs))}–{fmt(max(xs))}" if len(xs) > 1 else fmt(xs[0])


def quartiles(xs) -> str:
    q = statistics.quantiles(list(xs), n=4) if len(list(xs)) > 1 else [list(xs)[0]] * 3
    return f"{fmt(q[0])}–{fmt(q[2])}"


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if value != value:  # nan
        return "nan"
    a = abs(value)
    if a != 0 and (a < 1e-3 or a >= 1e6):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}" if a < 1000 else f"{value:.0f}"


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[fmt(c) for c in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def verdict(met: bool | None) -> str:
    return {True: "**met**", False: "**missed**", None: "not measured"}[met]


def sync(device) -> None:
    """Wait for queued CUDA work (a timer around asynchronous launches measures nothing)."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize()


class Timer:
    def __enter__(self) -> "Timer":
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.s = time.perf_counter() - self.t0


# ------------------------------------------------------------------------------------------
# the section


def section(title: str, smoke: bool, blocks: list[str], load: LoadMonitor | None = None) -> str:
    info = machine()
    head = [
        f"### {title}{' (SMOKE: tiny sizes, numbers mean nothing)' if smoke else ''}",
        "",
        f"- date: {now()}",
        f"- machine: {info['cpu']}, {info['cores']} cores; torch {info['torch']} "
        f"({info['torch threads']} threads), python {info['python']}; device {info['device']}",
        f"- command: `{command()}`",
    ]
    if load is not None:
        head.append(f"- load: {load.describe()}")
    return "\n".join(head) + "\n\n" + "\n\n".join(b.strip("\n") for b in blocks if b) + "\n"


def publish(text: str, args: argparse.Namespace) -> None:
    """Print the section; append it to the report file (BENCHMARKS.md for a real run)."""
    print(text, flush=True)
    path = report_path(args)
    if path is None:
        print("(smoke run: not appended anywhere)" if args.smoke else "(not appended: --no-report)")
        return
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write("\n" + text)
    print(f"(appended to {path})")
