"""What every benchmark shares: the machine description, tables, timing and the dated result file.

Each benchmark prints one section (title, date, machine, exact command, tables, targets) and, for a
real run, writes it to a new file benchmarks/results/<benchmark>-<YYYY-MM-DD-HHMM>.md (UTC; never
overwriting a file already there: a second run in the same minute gets a -2 suffix), then reminds the
user to update that benchmark's "Latest result" in BENCHMARKS.md, which is a reference written by hand.
A smoke run (`--smoke`) never writes under benchmarks/results/: it appends to $GENTUNE_BENCH_REPORT when
that is set (the smoke test points it at a temporary file), else nowhere. `--report PATH` overrides
both: a PATH ending in .md is appended to, any other PATH is a folder that gets the new dated file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python benchmarks/NAME.py` from anywhere imports the package
    sys.path.insert(0, str(ROOT))

BENCHMARKS_MD = ROOT / "BENCHMARKS.md"  # the reference; the scripts never write to it
RESULTS_DIR = ROOT / "benchmarks" / "results"
REPORT_ENV = "GENTUNE_BENCH_REPORT"
NO_GPU = "not measured: no GPU on this machine"
# Environment variables that change what a benchmark measures; the printed command includes them.
COMMAND_ENV = ("GENTUNE_DATA_MIRROR", "GENTUNE_CACHE", "GENTUNE_DATA_ROOT", REPORT_ENV)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true",
                   help=f"tiny sizes (< 20 s), for tests; never writes under benchmarks/results/ (appends to "
                        f"${REPORT_ENV} if set)")
    p.add_argument("--report", default=None,
                   help="where the section goes instead: a PATH ending in .md is appended to; any other PATH is a "
                        "folder that gets a new dated file <benchmark>-<date-time>.md [default: benchmarks/results/; "
                        "with --smoke: $" + REPORT_ENV + "]")
    p.add_argument("--no-report", action="store_true", help="print only, write nowhere")
    return p


def report_path(args: argparse.Namespace) -> Path | None:
    """Where publish() puts the section: a .md file to append to, a folder for a new dated file, or None."""
    if args.no_report:
        return None
    if args.report:
        return Path(args.report)
    if args.smoke:
        env = os.environ.get(REPORT_ENV)
        return Path(env) if env else None
    return RESULTS_DIR


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


def cpu_isa() -> str:
    """The CPU's class for these benchmarks: AVX512-BF16 (bf16 training is fast), AVX2, or neither."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return "AVX512-BF16" if "avx512_bf16" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    except OSError:
        pass
    return "ISA unknown"


def machine() -> dict[str, str]:
    import torch

    if torch.cuda.is_available():
        device = "cuda: " + torch.cuda.get_device_name(0)
    else:
        device = "cpu (no CUDA device visible)"
    return {
        "cpu": cpu_model(),
        "isa": cpu_isa(),
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
        f"- machine: {info['cpu']} ({info['isa']}), {info['cores']} cores; torch {info['torch']} "
        f"({info['torch threads']} threads), python {info['python']}; device {info['device']}",
        f"- command: `{command()}`",
    ]
    if load is not None:
        head.append(f"- load: {load.describe()}")
    return "\n".join(head) + "\n\n" + "\n\n".join(b.strip("\n") for b in blocks if b) + "\n"


def benchmark_name(text: str) -> str:
    """The benchmark's name from its section's heading (`### NAME: what it measures`)."""
    return text.lstrip("#").strip().split(":", 1)[0].split()[0]


def write_new(folder: Path, name: str, text: str) -> Path:
    """Write TEXT to a new file folder/NAME-<YYYY-MM-DD-HHMM>.md (UTC), atomically, never replacing a file:
    the text goes to a temporary file first, which is then hard-linked under the first free name (-2, -3...
    when runs end in the same minute); a reader never sees a half-written result."""
    folder.mkdir(parents=True, exist_ok=True)
    base = f"{name}-{dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d-%H%M')}"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{base}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        n = 1
        while True:
            path = folder / (f"{base}.md" if n == 1 else f"{base}-{n}.md")
            try:
                os.link(tmp, path)  # fails if the name is taken: an existing result is never overwritten
                return path
            except FileExistsError:
                n += 1
    finally:
        os.unlink(tmp)


def publish(text: str, args: argparse.Namespace, name: str | None = None) -> Path | None:
    """Print the section and write it where report_path() says: for a real run, a new dated file in
    benchmarks/results/. Returns the file written or appended to (None: nowhere)."""
    print(text, flush=True)
    path = report_path(args)
    if path is None:
        print("(smoke run: written nowhere)" if args.smoke else "(written nowhere: --no-report)")
        return None
    name = name or benchmark_name(text)
    if path.suffix == ".md":  # a file the user named (the smoke test's temporary one): append
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.write("\n" + text)
        print(f"(appended to {path})")
        return path
    lines = text.split("\n", 1)
    out = write_new(path, name, "# " + lines[0].lstrip("#").strip() + "\n" + (lines[1] if len(lines) > 1 else ""))
    shown = os.path.relpath(out, ROOT) if out.resolve().is_relative_to(ROOT) else str(out)
    print(f"(written to {shown})")
    if not args.smoke:
        print(f"Reminder: update the \"Latest result\" of `## {name}` in BENCHMARKS.md (and its row at a glance), "
              f"with a link to {shown}.")
    return out


def processes_under(path: Path) -> dict[int, str]:
    """pid -> command line of every live process of one driver run: its command line names `path` (the
    run's Ray temp dir), or it inherited RAY_TMPDIR=path (Ray's workers rename themselves ray::...).
    Used by benchmarks/first_trial.py and by the tests' drivers (tests/conftest.py) to end what a run left."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and (str(path) in cmdline or f"RAY_TMPDIR={path}".encode() in environ):
            found[int(entry.name)] = cmdline
    return found
