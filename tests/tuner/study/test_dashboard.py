"""optuna-dashboard, started as docs/watch.md says, serves a gentune study and the
trials' sample grids (artifacts uploaded by tuner.study.watch) over its HTTP API on 127.0.0.1."""

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from PIL import Image

from conftest import stop_server
from tuner.study.optuna_bridge import make_storage
from tuner.study.watch import upload_grids


def dashboard_command() -> str:
    exe = Path(sys.executable).parent / "optuna-dashboard"
    found = str(exe) if exe.is_file() else shutil.which("optuna-dashboard")
    if found is None:
        pytest.skip("optuna-dashboard is not installed (pip install -e '.[dashboard]')")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def test_dashboard_serves_the_study_and_the_trials_sample_grids(tmp_path):
    command = dashboard_command()
    exp = tmp_path / "demo"
    exp.mkdir()
    study = optuna.create_study(study_name="demo", storage=make_storage(str(exp / "optuna.journal")))
    pngs = {}
    for number, shade in enumerate((40, 200)):
        trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)})
        folder = exp / f"run_trial_{number}" / "samples"
        folder.mkdir(parents=True)
        Image.new("RGB", (8, 8), (shade, shade, shade)).save(folder / "kimg_0002.png")
        result = {"fid": 100.0 + number, "kimg": 2.0, "grid_samples": f"run_trial_{number}/samples/kimg_0002.png"}
        assert upload_grids(study, trial._trial_id, str(exp), result, str(number)) == 1
        study.tell(trial, 100.0 + number)
        pngs[number] = (folder / "kimg_0002.png").read_bytes()

    port = free_port()
    proc = subprocess.Popen([command, str(exp / "optuna.journal"), "--artifact-dir", str(exp / "artifacts"),
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                studies = json.loads(get(f"{base}/api/studies"))["study_summaries"]
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "optuna-dashboard did not answer within 60 s"
                time.sleep(0.5)
        assert [s["study_name"] for s in studies] == ["demo"]
        study_id = studies[0]["study_id"]
        detail = json.loads(get(f"{base}/api/studies/{study_id}"))
        trials = sorted(detail["trials"], key=lambda t: t["number"])
        assert len(trials) == 2
        for t in trials:
            [artifact] = t["artifacts"]
            assert artifact["filename"] == "kimg_0002.png" and artifact["mimetype"] == "image/png"
            # the image the dashboard shows is the trial's PNG, byte for byte
            served = get(f"{base}/artifacts/{study_id}/{t['trial_id']}/{artifact['artifact_id']}")
            assert served == pngs[t["number"]]
    finally:
        stop_server(proc)  # the server this test started, by its PID
    with pytest.raises(OSError):
        get(f"{base}/api/studies")  # stopped
