"""Where a command's CPU goes, by process kind: every process it starts, Ray's daemons included.

    sudo apt-get install acct                       # accton and dump-acct (BSD process accounting)
    python tools/suite_census.py -- python -m pytest -q -n 3 --dist loadfile --no-loadscope-reorder

Runs the command with the kernel's process accounting on (root only: it is system-wide, so run it on
a quiet machine) and a poller that records each new process's command line (Ray renames its workers,
and the kernel's record keeps only a thread's 15-character name). Each exited process's user + system
CPU is then summed by kind: Ray worker processes, each of Ray's daemons, the pytest workers, the drivers
by script. A process still running when the command ends (none, after a clean pytest run) is not counted.
Prints the wall time, the total CPU and one row per kind; docs/testing.md holds the latest census.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# command-line fragments of Ray's own processes, in the order they are tested
RAY_PROCESSES = {
    "gcs_server": "Ray: GCS server",
    "raylet/raylet": "Ray: raylet",
    "dashboard/agent.py": "Ray: dashboard agent",
    "dashboard/dashboard.py": "Ray: dashboard",
    "runtime_env/agent/main.py": "Ray: runtime-env agent",
    "log_monitor.py": "Ray: log monitor",
    "autoscaler/_private/monitor.py": "Ray: autoscaler monitor",
    "default_worker.py": "Ray: worker processes (trials)",
}


def process_kind(cmdline: str) -> str:
    """The row a process's CPU is counted in, from its first command line."""
    for fragment, kind in RAY_PROCESSES.items():
        if fragment in cmdline:
            return kind
    if "exec(eval(sys.stdin.readline()))" in cmdline:  # how pytest-xdist (execnet) starts its workers
        return "pytest workers (in-process tests)"
    args = cmdline.split()
    if not args:
        return "other"
    if "python" not in Path(args[0]).name:
        return Path(args[0]).name
    rest = [a for a in args[1:] if a not in ("-u", "-B")]
    if rest[:1] == ["-m"] and len(rest) > 1:
        return f"python -m {rest[1]}"
    if rest[:1] == ["-c"]:
        return "python -c (helpers)"
    script = rest[0] if rest else ""
    match = re.search(r"((?:tuner|analysis|benchmarks|tools)/[\w/]+\.py)$", script)
    return f"python {match.group(1) if match else Path(script).name}"


def parse_dump_acct(text: str) -> list[tuple[int, float]]:
    """(pid, CPU seconds) of each record of `dump-acct` (fields split by '|': comm, version, user and
    system time in 1/100 s, elapsed, uid, gid, memory, io, pid, ...)."""
    records = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split("|")]
        if len(fields) >= 10 and fields[9].isdigit():
            records.append((int(fields[9]), (float(fields[2]) + float(fields[3])) / 100))
    return records


def census(records: list[tuple[int, float]], cmdlines: dict[int, str]) -> dict[str, tuple[float, int]]:
    """CPU seconds and process count per kind; a process whose command line was not seen is 'unseen'."""
    rows: dict[str, list] = collections.defaultdict(lambda: [0.0, 0])
    for pid, cpu in records:
        kind = process_kind(cmdlines[pid]) if pid in cmdlines else "unseen (short-lived)"
        rows[kind][0] += cpu
        rows[kind][1] += 1
    return {k: (c, n) for k, (c, n) in rows.items()}


def poll_cmdlines(seen: dict[int, str], stop: threading.Event, every: float = 0.1) -> None:
    while not stop.is_set():
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) not in seen:
                try:
                    raw = Path(f"/proc/{entry}/cmdline").read_bytes()
                except OSError:
                    continue
                if raw:
                    seen[int(entry)] = raw.replace(b"\0", b" ").decode(errors="replace")
        stop.wait(every)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python tools/suite_census.py", description=__doc__.split("\n\n")[0])
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command to measure, after --")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("command: give the command to measure after --")
    missing = [tool for tool in ("accton", "dump-acct") if shutil.which(tool) is None]
    if missing:
        print(f"error: {', '.join(missing)}: not installed (Debian: apt-get install acct)", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("error: process accounting (accton) needs root", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="suite-census-") as tmp:
        log = Path(tmp) / "pacct"
        log.touch()
        seen: dict[int, str] = {}
        stop = threading.Event()
        poller = threading.Thread(target=poll_cmdlines, args=(seen, stop), daemon=True)
        poller.start()
        subprocess.run(["accton", str(log)], check=True, capture_output=True)
        start = time.monotonic()
        try:
            rc = subprocess.run(command).returncode
        finally:
            wall = time.monotonic() - start
            subprocess.run(["accton", "off"], capture_output=True)
            stop.set()
            poller.join()
        dump = subprocess.run(["dump-acct", str(log)], capture_output=True, text=True, check=True).stdout
    rows = census(parse_dump_acct(dump), seen)
    total = sum(c for c, _ in rows.values())
    print(f"\ncommand exit status {rc}; wall {wall:.0f} s; CPU of every process it started {total:.0f} s "
          f"({total / wall:.2f} cores busy on average)")
    print("| CPU (s) | share | processes | s each | kind |\n| ---: | ---: | ---: | ---: | --- |")
    for kind, (cpu, n) in sorted(rows.items(), key=lambda kv: -kv[1][0]):
        if cpu >= 1:
            print(f"| {cpu:.0f} | {cpu / total:.0%} | {n} | {cpu / n:.1f} | {kind} |")
    return rc


if __name__ == "__main__":
    sys.exit(main())
