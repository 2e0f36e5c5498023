"""tools/suite_census.py: which row each process's CPU is counted in, read from real command lines of a
test run (docs/testing.md), and the sums, on a dump-acct text written here."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "tools"))
import suite_census  # noqa: E402

PY = "/venv/bin/python"
CMDLINES = {
    # Ray's daemons and workers, as /proc shows them when they start
    "/venv/lib/python3.11/site-packages/ray/core/src/ray/gcs/gcs_server --log_dir=/tmp/ray": "Ray: GCS server",
    "/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet --raylet_socket_name=x": "Ray: raylet",
    f"{PY} -u /venv/lib/python3.11/site-packages/ray/dashboard/agent.py --node-ip-address=1": "Ray: dashboard agent",
    f"{PY} /venv/lib/python3.11/site-packages/ray/dashboard/dashboard.py --host=127.0.0.1": "Ray: dashboard",
    f"{PY} -u /venv/lib/python3.11/site-packages/ray/_private/runtime_env/agent/main.py --node-id=a": "Ray: runtime-env agent",
    f"{PY} -u /venv/lib/python3.11/site-packages/ray/_private/log_monitor.py --session-dir=s": "Ray: log monitor",
    f"{PY} -u /venv/lib/python3.11/site-packages/ray/autoscaler/_private/monitor.py --logs-dir=l": "Ray: autoscaler monitor",
    f"{PY} /venv/lib/python3.11/site-packages/ray/_private/workers/default_worker.py --node-id=a": "Ray: worker processes (trials)",
    # the tests' own processes
    f"{PY} -u -c import sys;exec(eval(sys.stdin.readline()))": "pytest workers (in-process tests)",
    f"{PY} tuner/search.py --storage-path /tmp/pytest-of-root/s --name killed": "python tuner/search.py",
    f"{PY} /work/clone/benchmarks/scaling.py --smoke": "python benchmarks/scaling.py",
    f"{PY} -m analysis.rerun /tmp/x --top 1": "python -m analysis.rerun",
    f"{PY} -c import torch; print(1)": "python -c (helpers)",
    "/usr/bin/bash -c sleep 1": "bash",
}


@pytest.mark.parametrize("cmdline", list(CMDLINES))
def test_each_process_is_counted_in_its_kind(cmdline):
    assert suite_census.process_kind(cmdline) == CMDLINES[cmdline]


def test_cpu_is_summed_per_kind_from_user_and_system_time():
    # dump-acct's fields: comm | version | user | system | elapsed | uid | gid | memory | io | pid | ppid | ...
    dump = "\n".join([
        "ray::ImplicitFu |v3|   512.00|    38.00|  900.00|     0|     0|  1.00|     0.00|   101|     1|",
        "raylet          |v3|    30.00|    10.00|  900.00|     0|     0|  1.00|     0.00|   102|     1|",
        "ray::IDLE       |v3|   100.00|     0.00|  900.00|     0|     0|  1.00|     0.00|   103|     1|",
        "python          |v3|     1.00|     2.00|    5.00|     0|     0|  1.00|     0.00|   104|     1|",
        "not a record",
    ])
    records = suite_census.parse_dump_acct(dump)
    assert records == [(101, 5.5), (102, 0.4), (103, 1.0), (104, 0.03)]
    worker = f"{PY} /venv/ray/_private/workers/default_worker.py"
    cmdlines = {101: worker, 102: "/venv/ray/core/src/ray/raylet/raylet", 103: worker}
    assert suite_census.census(records, cmdlines) == {  # float sums of hundredths: approx
        "Ray: worker processes (trials)": (pytest.approx(6.5), 2), "Ray: raylet": (pytest.approx(0.4), 1),
        "unseen (short-lived)": (pytest.approx(0.03), 1)}


def test_a_command_is_required():
    proc = subprocess.run([sys.executable, "tools/suite_census.py"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and "command" in proc.stderr.splitlines()[-1]
