"""The S3 path of a cluster study, run for real against an S3 server on loopback (moto's
ThreadedMotoServer, with IAM authentication on: wrong credentials are refused as AWS refuses them).

Gentune, Ray (through pyarrow) and Optuna's Boto3ArtifactStore reach the server the way they reach
any S3-compatible endpoint: $AWS_ENDPOINT_URL and the AWS credential variables. Nothing is mocked
but the cloud: Ray runs a real 2-node `ray.cluster_utils.Cluster`, the driver is a real
`python tuner/search.py` process that is SIGKILLed and resumed from a fresh home folder (a "new
head"), and the exports and the report read the experiment from S3.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from io import BytesIO
from pathlib import Path

import pytest

from conftest import TINY_TRIAL, Driver, stop_server, wait_for

moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

BUCKET_POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}


class S3:
    """A loopback S3 server with one IAM user whose key may use S3."""

    def __init__(self) -> None:
        import moto.settings

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
        self.server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        # the user is created before authentication is switched on (moto counts unauthenticated calls)
        boot = boto3.session.Session(aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap",
                                     region_name="us-east-1")
        iam = boot.client("iam", endpoint_url=self.endpoint)
        iam.create_user(UserName="lab")
        iam.put_user_policy(UserName="lab", PolicyName="s3", PolicyDocument=json.dumps(BUCKET_POLICY))
        key = iam.create_access_key(UserName="lab")["AccessKey"]
        self.key_id, self.secret = key["AccessKeyId"], key["SecretAccessKey"]
        self._auth_before = moto.settings.INITIAL_NO_AUTH_ACTION_COUNT
        moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # every later request must be signed with a known key

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.key_id,
                "AWS_SECRET_ACCESS_KEY": self.secret, "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}

    def client(self):
        return boto3.session.Session(aws_access_key_id=self.key_id, aws_secret_access_key=self.secret,
                                     region_name="us-east-1").client("s3", endpoint_url=self.endpoint)

    def keys(self, bucket: str, prefix: str = "") -> dict[str, int]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}

    def get(self, bucket: str, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as err:
            if err.response["Error"]["Code"] == "NoSuchKey":
                return None
            raise

    def stop(self) -> None:
        import moto.settings

        moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = self._auth_before
        self.server.stop()


@pytest.fixture(scope="module")
def s3_server():
    server = S3()
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server, tmp_path, monkeypatch):
    """The server's endpoint and the lab user's key in the environment, a fresh bucket, and a fresh
    home folder (where the driver keeps its copy of a study stored in S3)."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "head"))
    (tmp_path / "head").mkdir()
    s3_server.bucket = f"gentune-{os.getpid()}-{time.monotonic_ns() % 10**9}"
    s3_server.client().create_bucket(Bucket=s3_server.bucket)
    return s3_server


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------------------------
# bad storage: one line, exit 2, nothing started or written


@pytest.mark.parametrize("case, resume", [("wrong credentials", False), ("missing bucket", False),
                                          ("unreachable endpoint", False), ("wrong credentials", True)],
                         ids=["wrong-credentials", "missing-bucket", "unreachable-endpoint", "resume-wrong-credentials"])
def test_unusable_s3_storage_is_one_error_line_before_anything_starts(case, resume, s3, idx_mnist, tmp_path,
                                                                       monkeypatch, capsys):
    import ray

    from tuner import search
    from tuner.metrics import domain

    bucket = s3.bucket
    if case == "wrong credentials":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOTAKEYOFTHISSERVER")
        words = "the credentials were refused"
    elif case == "missing bucket":
        bucket = "no-such-bucket"
        words = "the bucket 'no-such-bucket' does not exist"
    else:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
        words = "the endpoint cannot be reached"
    flags = ["--storage-path", f"s3://{bucket}/lab", "--name", "bad",
             *(["--resume"] if resume else [*TINY_TRIAL, "--num-samples", "1", "--max-kimg", "0.25"])]
    before = s3.keys(s3.bucket)

    assert search.main(flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: invalid storage_path=") and words in err[0], err
    assert not ray.is_initialized()  # before Ray started
    assert s3.keys(s3.bucket) == before == {}  # nothing written to S3 ...
    assert not list((tmp_path / "head").iterdir())  # ... nor beside the driver
    # (nor the domain classifier trained, nor anything else cached: only idx_mnist's classifier is there)
    assert [p.relative_to(tmp_path / "cache") for p in (tmp_path / "cache").rglob("*") if p.is_file()] == \
        [Path("domain") / domain.classifier_path("mnist", 512).name]


def test_storage_uri_with_options_is_refused_with_the_variable_to_use(s3, capsys):
    from tuner import search

    assert search.main(["--storage-path", f"s3://{s3.bucket}/lab?endpoint_override={s3.endpoint}", "--name", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: invalid storage_path=") and "AWS_ENDPOINT_URL" in err[0]


# ------------------------------------------------------------------------------------------
# the journal mirror and its restore, alone


def test_journal_mirror_copies_only_whole_lines_and_restore_picks_the_newest_copy(s3, tmp_path):
    from tuner.study.remote import JournalMirror, read_remote, restore_journal

    uri = f"s3://{s3.bucket}/lab/study/optuna.journal"
    local = tmp_path / "head" / "optuna.journal"
    local.write_bytes(b'{"op": 0}\n{"op": 1}\n{"op": 2, "half')  # Optuna is writing line 3
    mirror = JournalMirror(local, uri)
    assert mirror.sync() and read_remote(uri) == b'{"op": 0}\n{"op": 1}\n'  # the torn line stays out
    assert not mirror.sync()  # nothing new: no copy
    with open(local, "ab") as fh:
        fh.write(b'": 1}\n')
    mirror.start()
    wait_for(lambda: read_remote(uri) == local.read_bytes(), 5, "the mirror to copy the finished line")
    mirror.stop()
    assert mirror.max_lag_s < 2

    # a new head: the journal comes from S3
    fresh = tmp_path / "new-head" / "optuna.journal"
    assert "restored" in restore_journal(fresh, uri) and fresh.read_bytes() == local.read_bytes()
    # the same head, ahead of S3 (its last writes were not copied yet): kept
    with open(fresh, "ab") as fh:
        fh.write(b'{"op": 3}\n')
    assert restore_journal(fresh, uri) is None and fresh.read_bytes().endswith(b'{"op": 3}\n')
    # a head whose copy is behind S3's: S3's replaces it
    behind = tmp_path / "old-head" / "optuna.journal"
    behind.parent.mkdir()
    behind.write_bytes(b'{"op": 0}\n')
    assert "restored" in restore_journal(behind, uri) and behind.read_bytes() == read_remote(uri)
    # a head with another history: set aside, never deleted
    behind.write_bytes(b'{"op": "other"}\n')
    assert "set aside" in restore_journal(behind, uri) and behind.read_bytes() == read_remote(uri)
    (aside,) = behind.parent.glob("optuna.journal.set-aside-*")
    assert aside.read_bytes() == b'{"op": "other"}\n'


# ------------------------------------------------------------------------------------------
# a study in S3 on a 2-node cluster, its driver killed, resumed on a new head


def complete(data: bytes) -> bytes:
    return data[:data.rfind(b"\n") + 1]


class LagProbe(threading.Thread):
    """Watches the driver's local journal and its copy in S3; `lags`: for each size of the local
    journal (whole lines), how long it took until S3's copy held at least that much."""

    def __init__(self, local: Path, s3: S3, bucket: str, key: str):
        super().__init__(daemon=True)
        self.local, self.s3, self.bucket, self.key = local, s3, bucket, key
        self.pending: dict[int, float] = {}
        self.lags: list[float] = []
        self.halt = threading.Event()

    def run(self) -> None:
        client = self.s3.client()
        while not self.halt.wait(0.1):
            now = time.monotonic()
            if self.local.is_file():
                size = len(complete(self.local.read_bytes()))
                self.pending.setdefault(size, now)
            try:
                remote = client.head_object(Bucket=self.bucket, Key=self.key)["ContentLength"]
            except Exception:  # noqa: BLE001 (not there yet)
                remote = 0
            for size in [s for s in self.pending if 0 < s <= remote]:
                self.lags.append(now - self.pending.pop(size))
            self.pending.pop(0, None)


@pytest.mark.slow
def test_s3_study_on_two_nodes_killed_and_resumed_on_a_new_head_keeps_every_trial(s3, idx_mnist, tmp_path,
                                                                                  monkeypatch):
    import optuna
    import pandas as pd
    import ray
    from ray.cluster_utils import Cluster

    from analysis import report
    from tuner.results import exports
    from tuner.study.optuna_bridge import make_storage
    from tuner.study.watch import PNG_SIGNATURE, artifact_location, artifact_store

    if ray.is_initialized():
        pytest.fail("a Ray runtime from an earlier test is still connected")
    name, n, bucket = "fmnist", 3, s3.bucket
    storage = f"s3://{bucket}/gentune"
    uri = f"{storage}/{name}"
    prefix = f"gentune/{name}/"
    flags = ["--storage-path", storage, "--name", name, *TINY_TRIAL, "--losses", "hinge",
             "--ranges", "g_width=8:8", "d_width=8:8", "batch_size=16,32", "--num-samples", str(n),
             "--max-concurrent", "2", "--max-kimg", "0.5", "--eval-every-kimg", "0.25", "--grace-kimg", "0.5"]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # the nodes inherit the AWS variables
    drivers: list[Driver] = []
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        address = ["--address", cluster.address]
        first_home = tmp_path / "head"
        probe = LagProbe(first_home / "gentune_studies" / name / "optuna.journal", s3, bucket, prefix + "optuna.journal")
        probe.start()
        drivers.append(driver := Driver([*flags, *address], tmp_path, "0"))

        def evaluated_in_s3() -> bool:
            keys = s3.keys(bucket, prefix)
            journal = s3.get(bucket, prefix + "optuna.journal") or b""
            return any("/checkpoint_" in k for k in keys) and b"intermediate_value" in journal

        wait_for(evaluated_in_s3, 240, "a checkpoint and a reported FID in S3", driver.proc)
        time.sleep(1.0)  # the journal's next writes (the mirror's lag is measured, not waited for)
        driver.kill()
        probe.halt.set()
        probe.join()
        # the trials of the experiment snapshot in S3 (what Tune restores from)
        newest = max(k for k in s3.keys(bucket, prefix) if k.startswith(prefix + "experiment_state-"))
        state = json.loads(s3.get(bucket, newest))
        ids_before = {json.loads(t)["trial_id"] for t, _ in state["trial_data"]}
        assert ids_before
        journal = s3.get(bucket, prefix + "optuna.journal")
        local = (first_home / "gentune_studies" / name / "optuna.journal").read_bytes()
        # the copy in S3 is whole and one of the local journal's versions
        assert journal and journal.endswith(b"\n") and local.startswith(journal)
        assert all(json.loads(line) for line in journal.splitlines())
        print(f"\njournal lag (S3 behind the local journal, polled every 0.1 s): {len(probe.lags)} versions, "
              f"max {max(probe.lags):.2f} s; bytes behind at the kill: {len(complete(local)) - len(journal)}")
        assert probe.lags and max(probe.lags) < 5.0  # within seconds of every write

        # a new head: a fresh home folder, without the first head's journal or copies
        monkeypatch.setenv("HOME", str(tmp_path / "new-head"))
        (tmp_path / "new-head").mkdir()
        drivers.append(resumed := Driver(["--storage-path", storage, "--name", name, "--resume", *address], tmp_path, "1"))
        assert resumed.wait(300) == 0, resumed.log.read_text()[-4000:]
        log = resumed.log.read_text()
        assert f"the Optuna journal was restored from {uri}/optuna.journal (this head had none)" in log
    finally:
        for d in drivers:
            d.kill()
        cluster.shutdown()

    # every trial kept, exactly --num-samples in the end (exports in S3)
    data = s3.get(bucket, prefix + "trials.csv")
    assert data is not None
    trials = pd.read_csv(BytesIO(data), dtype={"trial_id": str})
    assert len(trials) == n and trials["trial_id"].is_unique
    assert ids_before <= set(trials["trial_id"])
    assert set(trials["status"]) <= {"completed", "pruned"}

    # the journal in S3 holds the whole study: one finished Optuna trial per Ray trial
    journal_file = tmp_path / "journal-from-s3"
    journal_file.write_bytes(s3.get(bucket, prefix + "optuna.journal"))
    study = optuna.load_study(study_name=name, storage=make_storage(str(journal_file)))
    kept = [t for t in study.trials if not t.user_attrs.get("stale")]
    assert {t.user_attrs.get("ray_trial_id") for t in kept} == set(trials["trial_id"])
    assert all(t.state.is_finished() for t in study.trials)

    # the sample grids are Optuna artifacts in S3, readable through the artifact store
    store = artifact_store(artifact_location(uri))
    metas = [m for t in kept for m in optuna.artifacts.get_all_artifact_meta(t, storage=study._storage)]
    assert len(metas) >= n  # every trial evaluated at least once
    for meta in metas:
        assert prefix + "artifacts/" + meta.artifact_id in s3.keys(bucket, prefix + "artifacts/")
        with store.open_reader(meta.artifact_id) as fh:
            assert fh.read().startswith(PNG_SIGNATURE)

    # best.json names the checkpoint in S3, and it is there
    best = json.loads(s3.get(bucket, prefix + "best.json"))
    assert best["checkpoint"].startswith(uri + "/")
    assert any(k.startswith(best["checkpoint"][len("s3://") + len(bucket) + 1:]) for k in s3.keys(bucket, prefix))

    # the exports and the report, from the S3 folder
    assert exports.main([uri]) == 0
    out = tmp_path / "report"
    assert report.main([uri, "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert uri in text and "gentune-report-" not in text
    assert len(list(out.rglob("*.png"))) >= 1


# ------------------------------------------------------------------------------------------
# sample grids as Optuna artifacts in S3, and optuna-dashboard showing them in one command


def test_grids_uploaded_to_s3_are_served_by_the_dashboard_command(s3, tmp_path):
    import subprocess
    import sys
    import urllib.request

    import optuna
    from PIL import Image

    from conftest import REPO
    from tuner.study.optuna_bridge import make_storage
    from tuner.study.remote import write_remote
    from tuner.study.watch import upload_grids

    uri = f"s3://{s3.bucket}/lab/demo"
    journal = tmp_path / "head" / "optuna.journal"
    study = optuna.create_study(study_name="demo", storage=make_storage(str(journal)))
    pngs = {}
    for number, shade in enumerate((40, 200)):
        trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)})
        image = tmp_path / f"grid{number}.png"
        Image.new("RGB", (8, 8), (shade, shade, shade)).save(image)
        pngs[number] = image.read_bytes()
        write_remote(f"{uri}/run_trial_{number}/samples/kimg_0002.png", pngs[number])  # as Ray syncs a trial folder
        result = {"fid": 100.0 + number, "kimg": 2.0, "grid_samples": f"run_trial_{number}/samples/kimg_0002.png"}
        assert upload_grids(study, trial._trial_id, uri, result, str(number)) == 1  # Boto3ArtifactStore into S3
        study.tell(trial, 100.0 + number)
    assert len(s3.keys(s3.bucket, "lab/demo/artifacts/")) == 2
    write_remote(f"{uri}/optuna.journal", journal.read_bytes())  # as the driver's mirror does

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "tuner.study.dashboard", uri, "--port", str(port)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def get(path: str) -> bytes:
        with urllib.request.urlopen(base + path, timeout=10) as response:
            return response.read()

    def answers():
        try:
            return json.loads(get("/api/studies"))["study_summaries"]
        except OSError:
            return None

    try:
        studies = wait_for(answers, 60, "the dashboard to answer", proc, poll=0.3)
        assert [s["study_name"] for s in studies] == ["demo"]
        detail = json.loads(get(f"/api/studies/{studies[0]['study_id']}"))
        for t in sorted(detail["trials"], key=lambda t: t["number"]):
            [artifact] = t["artifacts"]
            assert artifact["filename"] == "kimg_0002.png"
            # the image the dashboard shows is the trial's PNG, byte for byte, read from S3
            assert get(f"/artifacts/{studies[0]['study_id']}/{t['trial_id']}/{artifact['artifact_id']}") == pngs[t["number"]]
    finally:
        stop_server(proc)  # the server this test started, by its PID


# ------------------------------------------------------------------------------------------
# Ctrl-C, then --resume on a new head (the walkthrough of docs/cluster.md)


@pytest.mark.slow
def test_s3_study_interrupted_with_ctrl_c_resumes_on_a_new_head_with_every_trial_told_to_optuna(s3, idx_mnist,
                                                                                                  tmp_path, monkeypatch):
    import signal

    import optuna
    import pandas as pd

    from tuner.study.optuna_bridge import make_storage

    name, n, bucket = "ctrlc", 3, s3.bucket
    storage = f"s3://{bucket}/gentune"
    prefix = f"gentune/{name}/"
    flags = ["--storage-path", storage, "--name", name, *TINY_TRIAL, "--losses", "hinge",
             "--ranges", "g_width=8:8", "d_width=8:8", "batch_size=16,32", "--num-samples", str(n),
             "--max-concurrent", "2", "--max-kimg", "0.5", "--eval-every-kimg", "0.25", "--grace-kimg", "0.5"]
    drivers = [driver := Driver(flags, tmp_path, "0")]
    try:
        wait_for(lambda: any("/checkpoint_" in k for k in s3.keys(bucket, prefix)), 240, "a checkpoint in S3", driver.proc)
        os.kill(driver.proc.pid, signal.SIGINT)  # Ctrl-C: Tune saves its state and the driver ends
        driver.wait(120)
        assert "Experiment has been interrupted" in driver.log.read_text()
        monkeypatch.setenv("HOME", str(tmp_path / "new-head"))
        (tmp_path / "new-head").mkdir()
        drivers.append(resumed := Driver(["--storage-path", storage, "--name", name, "--resume"], tmp_path, "1"))
        assert resumed.wait(300) == 0, resumed.log.read_text()[-4000:]
    finally:
        for d in drivers:
            d.kill()
    trials = pd.read_csv(BytesIO(s3.get(bucket, prefix + "trials.csv")), dtype={"trial_id": str})
    assert len(trials) == n and set(trials["status"]) <= {"completed", "pruned"}
    journal = tmp_path / "journal-from-s3"
    journal.write_bytes(s3.get(bucket, prefix + "optuna.journal"))
    study = optuna.load_study(study_name=name, storage=make_storage(str(journal)))
    told = {t.user_attrs.get("ray_trial_id"): t for t in study.trials if not t.user_attrs.get("stale")}
    # every Ray trial, the ones interrupted and resumed too, is told to its own Optuna trial
    assert set(trials["trial_id"]) <= set(told)
    assert all(told[i].state.name in ("COMPLETE", "PRUNED") for i in trials["trial_id"])


# ------------------------------------------------------------------------------------------
# a resume's repair of a snapshot in S3


@pytest.mark.slow
def test_a_resume_from_s3_repairs_a_deleted_checkpoint_a_torn_snapshot_a_move_and_a_damaged_file(s3, idx_mnist, tmp_path, capsys):
    """The checks and repairs of a resume before Ray starts (tuner/study/resume.py), on a study in S3.
    (1) Tune deletes a checkpoint pushed out of the kept set before its next snapshot (docs/faults.md): a
    driver killed in between leaves a snapshot naming a checkpoint that is gone, and Tune's restore of
    that trial fails on every retry. Here a finished one-trial study in S3 is made to hold its trial as
    unfinished (PAUSED) with its latest checkpoint deleted: the repair puts the snapshot back in S3
    pointing at the older checkpoint, and `--resume` finishes the trial. (2) A torn snapshot: the
    search generator's count from before the trial was created; `--resume` sets it to the trials of the
    experiment state, and no extra trial is run. (3) The study copied to another prefix, the copy's newest
    generator state garbage: rebuilt from an older copy (the damaged file set aside in S3) and pointed at
    the copy, which resumes there while the original stays as it was."""
    import pandas as pd
    from ray.tune.experiment import Trial
    from damaged_studies import search_gen_state, write_search_gen_state
    from tuner.study.resume import check_restorable_remote

    name, bucket = "deleted", s3.bucket
    uri = f"s3://{bucket}/gentune/{name}"
    prefix = f"gentune/{name}/"
    flags = ["--storage-path", f"s3://{bucket}/gentune", "--name", name, *TINY_TRIAL, "--losses", "hinge",
             "--ranges", "g_width=8:8", "d_width=8:8", "batch_size=16,32", "--num-samples", "1",
             "--max-kimg", "0.5", "--eval-every-kimg", "0.25", "--grace-kimg", "0.5"]
    driver = Driver(flags, tmp_path, "0")
    try:
        assert driver.wait(240) == 0, driver.log.read_text()[-4000:]
    finally:
        driver.kill()
    client = s3.client()
    key = max(k for k in s3.keys(bucket, prefix) if k.startswith(prefix + "experiment_state-"))
    state = json.loads(s3.get(bucket, key))
    (trial_json, metadata), = state["trial_data"]
    record = json.loads(trial_json)
    state["trial_data"] = [[json.dumps({**record, "status": "PAUSED"}), metadata]]
    client.put_object(Bucket=bucket, Key=key, Body=json.dumps(state).encode())
    checkpoints = sorted({k.split("/")[3] for k in s3.keys(bucket, prefix) if "/checkpoint_" in k})
    assert checkpoints == ["checkpoint_000000", "checkpoint_000001"]
    for k in s3.keys(bucket, prefix):
        if f"/{checkpoints[-1]}/" in k:
            client.delete_object(Bucket=bucket, Key=k)

    said = (f"gentune: trial {record['trial_id']}: its checkpoint checkpoint_000001 in Tune's snapshot was deleted "
            "after the snapshot (Tune keeps the 2 best and the latest); it resumes from checkpoint_000000 (")
    assert check_restorable_remote(uri, searched=True) == {record["trial_id"]}
    assert said in capsys.readouterr().err
    (trial_json, metadata), = json.loads(s3.get(bucket, key))["trial_data"]  # read back as Tune's restore reads it
    trial = Trial.from_json_state(trial_json, stub=True)
    trial.restore_run_metadata(metadata)
    assert trial.status == "PAUSED" and trial.checkpoint.path.endswith("/checkpoint_000000")
    before = {k: s3.get(bucket, k) for k in s3.keys(bucket, prefix) if "/" not in k[len(prefix):]}
    check_restorable_remote(uri, searched=True)  # nothing left to repair: nothing said, nothing written
    assert capsys.readouterr().err == ""
    assert {k: s3.get(bucket, k) for k in s3.keys(bucket, prefix) if "/" not in k[len(prefix):]} == before

    # the same damage once more, repaired by `--resume` itself, which then finishes the trial from that checkpoint
    client.put_object(Bucket=bucket, Key=key, Body=json.dumps(state).encode())
    resumed = Driver(["--storage-path", f"s3://{bucket}/gentune", "--name", name, "--resume"], tmp_path, "1")
    try:
        assert resumed.wait(240) == 0, resumed.log.read_text()[-4000:]
    finally:
        resumed.kill()
    assert said in resumed.log.read_text()
    trials = pd.read_csv(BytesIO(s3.get(bucket, prefix + "trials.csv")), dtype={"trial_id": str})
    assert list(trials["status"]) == ["completed"]

    # a torn snapshot in S3 (search_gen_state from before the trial was created): unrepaired, Tune would
    # create one trial more than --num-samples; the resume sets its count to the experiment state's
    gen_key = max(k for k in s3.keys(bucket, prefix) if k.startswith(prefix + "search_gen_state-"))
    folder = tmp_path / "gen"  # damaged as the local torn-snapshot test damages it, then put back
    folder.mkdir()
    gen_file = folder / gen_key.rsplit("/", 1)[1]
    gen_file.write_bytes(s3.get(bucket, gen_key))
    gen = search_gen_state(folder)
    assert gen["counter"] == 1
    write_search_gen_state(folder, {**gen, "counter": 0})
    client.put_object(Bucket=bucket, Key=gen_key, Body=gen_file.read_bytes())
    again = Driver(["--storage-path", f"s3://{bucket}/gentune", "--name", name, "--resume"], tmp_path, "2")
    try:
        assert again.wait(240) == 0, again.log.read_text()[-4000:]
    finally:
        again.kill()
    assert "counted 0 trials, the experiment state holds 1" in again.log.read_text()
    trials = pd.read_csv(BytesIO(s3.get(bucket, prefix + "trials.csv")), dtype={"trial_id": str})
    assert list(trials["trial_id"]) == [record["trial_id"]]

    # (3) the study copied to another prefix, with the copy's newest search_gen_state garbage (a damaged
    # file): the copy's generator state is rebuilt from its older one (the damaged one set aside beside it,
    # in S3) and pointed at the new prefix, so that new trials are written there and not into the original
    from tuner.study.resume import _storages

    moved, moved_prefix = f"s3://{bucket}/gentune/moved", "gentune/moved/"
    originals = {k: s3.get(bucket, k) for k in s3.keys(bucket, prefix)}
    for k, data in originals.items():
        client.put_object(Bucket=bucket, Key=moved_prefix + k[len(prefix):], Body=data)
    gen_names = sorted(k[len(prefix):] for k in originals if k.startswith(prefix + "search_gen_state-"))
    assert len(gen_names) >= 2  # one per driver run: an older copy to rebuild from
    client.put_object(Bucket=bucket, Key=moved_prefix + gen_names[-1], Body=b"garbage")
    capsys.readouterr()
    assert check_restorable_remote(moved, searched=True) == {record["trial_id"]}
    err = capsys.readouterr().err
    assert f"the experiment was moved from {bucket}/gentune/{name} to {bucket}/gentune/moved" in err
    assert f"{gen_names[-1]} is unreadable" in err and f"rebuilt from {gen_names[-2]}" in err
    assert s3.get(bucket, moved_prefix + gen_names[-1] + ".damaged") == b"garbage"
    folder = tmp_path / "moved"
    folder.mkdir()
    (folder / gen_names[-1]).write_bytes(s3.get(bucket, moved_prefix + gen_names[-1]))
    storages = _storages(search_gen_state(folder))
    assert storages and {s.experiment_fs_path for s in storages} == {f"{bucket}/gentune/moved"}
    assert {k: s3.get(bucket, k) for k in s3.keys(bucket, prefix)} == originals  # the original is left alone
    moved_run = Driver(["--storage-path", f"s3://{bucket}/gentune", "--name", "moved", "--resume"], tmp_path, "3")
    try:
        assert moved_run.wait(240) == 0, moved_run.log.read_text()[-4000:]
    finally:
        moved_run.kill()
    trials = pd.read_csv(BytesIO(s3.get(bucket, moved_prefix + "trials.csv")), dtype={"trial_id": str})
    assert list(trials["trial_id"]) == [record["trial_id"]]
    assert {k: s3.get(bucket, k) for k in s3.keys(bucket, prefix)} == originals
