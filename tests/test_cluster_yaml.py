"""cluster.yaml (AWS) and cluster-local.yaml (own machines), checked offline.

First Ray's own checks, the path `ray up` takes before any cloud call (docs/ray-optuna.md, "Checking a
cluster yaml offline"): `prepare_config` merges the provider's defaults.yaml and `validate_config`
applies ray-schema.json (unknown keys, types) and the min/max worker rule. Neither needs boto3, AWS
credentials or the network; the autouse fixture below makes any connection attempt fail the test.

Then the project's own rules, which Ray does not check: the security group opens only SSH to the
outside, no credentials in the files, the project is copied to and installed on every node, the
dashboard stays on loopback, Ray's Prometheus endpoints are switched off, every node starts Ray with
token auth and the cluster's own token (a file made by `python -m tuner.config.cluster_token`, mode 0600,
never the account's ~/.ray/auth_token) mounted from the launching machine, every node's Ray and shell
use a temp folder of the account's own, a node without a GPU installs the CPU build of torch, a
head-only local cluster keeps `worker_ips: []`, and docs/cluster.md says what `ray up` needs (rsync,
tmux, SSH config, the token, the launcher's state folder) and uses flags that tuner/search.py has.
tests/test_security.py runs the start commands for real, checks that Ray refuses a client without
the token, and probes every port the nodes listen on.
"""

from __future__ import annotations

import ast
import copy
import itertools
import re
import shlex
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parent.parent
AWS = ROOT / "cluster.yaml"
LOCAL = ROOT / "cluster-local.yaml"
DOCS = ROOT / "docs" / "cluster.md"
CONFIGS = [pytest.param(AWS, id="aws"), pytest.param(LOCAL, id="local")]
PROJECT_MOUNT = "~/gentune"


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access attempted during an offline test: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def raw(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def validated(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` does before its first cloud call; raises on an invalid config."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


# ------------------------------------------------------------------------------------------
# Ray's own validation


@pytest.mark.parametrize("path", CONFIGS)
def test_ray_accepts_the_config(path: Path) -> None:
    cfg = validated(raw(path))
    assert cfg["head_node_type"] in cfg["available_node_types"]


@pytest.mark.parametrize("path", CONFIGS)
def test_typo_in_top_level_key_is_rejected(path: Path) -> None:
    bad = raw(path)
    bad["max_wrokers"] = 4
    with pytest.raises(Exception) as err:
        validated(bad)
    assert "max_wrokers" in str(err.value)


def test_typo_in_node_type_key_is_rejected() -> None:
    bad = raw(AWS)
    bad["available_node_types"]["gpu_worker"]["min_wrokers"] = 1
    with pytest.raises(Exception) as err:
        validated(bad)
    assert "min_wrokers" in str(err.value)


def test_aws_min_workers_above_max_workers_is_rejected() -> None:
    bad = raw(AWS)
    bad["available_node_types"]["gpu_worker"]["min_workers"] = bad["max_workers"] + 1
    with pytest.raises(ValueError, match="min_workers"):
        validated(bad)


def test_local_min_workers_above_max_workers_is_rejected() -> None:
    bad = raw(LOCAL)
    assert len(bad["provider"]["worker_ips"]) >= 2
    bad["min_workers"], bad["max_workers"] = 2, 1
    with pytest.raises(ValueError, match="min_workers"):
        validated(bad)


def test_local_config_without_head_ip_is_rejected() -> None:
    bad = raw(LOCAL)
    del bad["provider"]["head_ip"]
    with pytest.raises(Exception, match="head_ip"):
        validated(bad)


@pytest.mark.parametrize("path", CONFIGS)
def test_each_node_type_min_workers_at_most_its_max(path: Path) -> None:
    # Ray only compares the sum of min_workers with the global max_workers; check each type too.
    for name, node_type in validated(raw(path))["available_node_types"].items():
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"], name


# ------------------------------------------------------------------------------------------
# AWS layout: CPU head, autoscaled spot GPU workers, S3 through instance profiles


def test_aws_layout() -> None:
    cfg = validated(raw(AWS))
    assert cfg["provider"]["type"] == "aws"
    assert cfg["provider"]["region"] == "us-west-2"
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"].get("GPU") == 0, "no GPU trial may land on the head"
    assert head["resources"].get("CPU", 0) >= 1, "the driver runs on the head"
    assert "InstanceMarketOptions" not in head["node_config"], "the head is on-demand"
    workers = {k: v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]}
    assert workers
    for name, node in workers.items():
        assert node["resources"].get("GPU", 0) >= 1, name
        assert node["min_workers"] == 0, f"{name} must autoscale from zero"
        assert node["max_workers"] >= 1, name
        assert node["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot", name
        # workers write checkpoints to S3 themselves: they need an instance profile
        assert node["node_config"].get("IamInstanceProfile"), name
    for name, node in cfg["available_node_types"].items():
        # without ImageId Ray falls back to its built-in Ubuntu 18.04 DLAMI
        assert str(node["node_config"].get("ImageId", "")).startswith("ami-"), name


# ------------------------------------------------------------------------------------------
# Security group: only SSH from outside


def ray_default_inbound_rules(cluster_sg: str, extended_rules: list[dict]) -> list[dict]:
    """The inbound rules `ray up` authorizes on the security group it creates.

    Ray's AWS module imports boto3 at import time, which this offline test does not need: the
    pure functions that build the rules are read from its source and run on their own, so the
    check follows the installed Ray rather than a copy of its defaults.
    """
    path = Path(ray.autoscaler.__file__).parent / "_private" / "aws" / "config.py"
    tree = ast.parse(path.read_text())
    wanted = {"_create_default_inbound_rules", "_create_default_intracluster_inbound_rules",
              "_create_default_ssh_inbound_rules"}
    functions = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in wanted]
    assert {f.name for f in functions} == wanted, f"Ray's security group code moved: {path}"
    namespace: dict[str, Any] = {"itertools": itertools}
    exec(compile(ast.Module(body=functions, type_ignores=[]), str(path), "exec"), namespace)
    return namespace["_create_default_inbound_rules"]({cluster_sg}, extended_rules)


def outside_sources(rule: dict) -> list[str]:
    """Sources of a rule that are not the cluster's own security group."""
    sources = [r.get("CidrIp") for r in rule.get("IpRanges", [])]
    sources += [r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])]
    sources += [r.get("PrefixListId") for r in rule.get("PrefixListIds", [])]
    return [s for s in sources if s]


def test_security_group_opens_only_ssh_to_the_outside() -> None:
    cfg = validated(raw(AWS))
    for name, node in cfg["available_node_types"].items():
        assert "SecurityGroupIds" not in node["node_config"], (
            f"{name}: a user-provided security group is not checked by this test")
    extended = cfg["provider"].get("security_group", {}).get("IpPermissions", [])
    rules = ray_default_inbound_rules("sg-cluster", extended)
    assert rules, "Ray's default rules could not be built"
    for rule in rules:
        if outside_sources(rule):
            assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", 22, 22), rule
        else:
            groups = {pair["GroupId"] for pair in rule.get("UserIdGroupPairs", [])}
            assert groups == {"sg-cluster"}, f"rule with neither an outside source nor the cluster: {rule}"
    text = AWS.read_text()
    for port in re.findall(r"(?:FromPort|ToPort)\s*:\s*(\d+)", text):
        assert port == "22", f"port {port} opened in cluster.yaml"


def test_security_rule_check_catches_an_open_dashboard() -> None:
    # bad input: a config that opens the dashboard port to the world must fail the rule above
    opened = [{"FromPort": 8265, "ToPort": 8265, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]
    rules = ray_default_inbound_rules("sg-cluster", opened)
    offending = [r for r in rules if outside_sources(r) and (r["FromPort"], r["ToPort"]) != (22, 22)]
    assert offending == opened


@pytest.mark.parametrize("path", CONFIGS)
def test_dashboard_listens_on_loopback_only(path: Path) -> None:
    cfg = validated(raw(path))
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert not re.search(r"(?<![\d.])0\.0\.0\.0(?![\d.])", path.read_text()), "no 0.0.0.0 anywhere"


# ------------------------------------------------------------------------------------------
# No credentials


CREDENTIAL_PATTERNS = [
    r"AKIA[0-9A-Z]{16}",  # AWS access key id
    r"ASIA[0-9A-Z]{16}",  # AWS temporary access key id
    r"aws_access_key_id",
    r"aws_secret",
    r"aws_session_token",
    r"secret_access_key",
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    r"RAY_AUTH_TOKEN\s*=",
    r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])",  # a Ray token (`ray get-auth-token`: 32 random bytes, hex)
    r"(password|passwd)\s*[:=]",
]


def credentials_in(text: str) -> list[str]:
    return [m.group(0) for p in CREDENTIAL_PATTERNS for m in re.finditer(p, text, flags=re.IGNORECASE)]


@pytest.mark.parametrize("path", [AWS, LOCAL, DOCS], ids=["aws", "local", "docs"])
def test_no_credentials_in_file(path: Path) -> None:
    assert credentials_in(path.read_text()) == []


def test_credential_check_catches_planted_keys() -> None:
    planted = "\n".join([
        "aws_access_key_id: " + "AKIA" + "ABCDEFGHIJKLMNOP",
        "Aws_Secret_Access_Key = x",
        "-----BEGIN OPENSSH " + "PRIVATE KEY-----",
        "token: " + "0123456789abcdef" * 4,
    ])
    assert len(credentials_in(planted)) >= 5


# ------------------------------------------------------------------------------------------
# The project reaches every node (docs/ray-optuna.md §7)


def effective_setup(cfg: dict[str, Any]) -> dict[str, list[str]]:
    """Setup commands per node type after prepare_config's merge (a node type's own
    worker_setup_commands replace the global ones)."""
    out = {}
    for name, node in cfg["available_node_types"].items():
        if name == cfg["head_node_type"]:
            out[name] = cfg["head_setup_commands"]
        else:
            out[name] = node.get("worker_setup_commands", cfg["worker_setup_commands"])
    return out


@pytest.mark.parametrize("path", CONFIGS)
def test_project_is_mounted_and_installed_on_every_node(path: Path) -> None:
    cfg = validated(raw(path))
    local = cfg["file_mounts"].get(PROJECT_MOUNT)
    assert local is not None, f"file_mounts must copy the project to {PROJECT_MOUNT}"
    # `ray up` resolves "." against its working directory: the docs say to run it from the repo root
    assert (ROOT / local / "pyproject.toml").is_file()
    for name, commands in effective_setup(cfg).items():
        words = [shlex.split(c) for c in commands]
        installs = [i for i, w in enumerate(words) if w[:3] == ["pip", "install", "-e"] and w[3:] == [PROJECT_MOUNT]]
        assert installs, f"{name}: no `pip install -e {PROJECT_MOUNT}`"
        ray_installs = [i for i, w in enumerate(words) if w[:2] == ["pip", "install"] and any(a.startswith("ray[") for a in w)]
        assert ray_installs and ray_installs[0] < installs[0], f"{name}: install ray before the project"
    assert any(".git" in pattern for pattern in cfg["rsync_exclude"]), "don't copy .git to every node"


@pytest.mark.parametrize("path", CONFIGS)
def test_every_command_is_valid_bash(path: Path) -> None:
    cfg = validated(raw(path))
    keys = ["initialization_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands"]
    for command in itertools.chain.from_iterable(cfg.get(k, []) for k in keys):
        result = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
        assert result.returncode == 0, f"{command!r}: {result.stderr}"


SHARED_TOKEN = "~/.ray/auth_token"  # the account's own token, which every local study uses: never a cluster's
NODE_TMPDIR = "$HOME/.gentune-tmp"
METRICS_OFF = {"RAY_enable_metrics_collection": "0", "DASHBOARD_METRIC_PORT": "-1", "AUTOSCALER_METRIC_PORT": "-1"}


def token_mount(cfg: dict[str, Any]) -> str:
    """The cluster's own token file: the same path on the launching machine and on every node."""
    return f"~/.gentune/{cfg['cluster_name']}.token"


def start_commands(cfg: dict[str, Any]) -> dict[str, list[str]]:
    """The commands that run `ray start`, per kind of node."""
    out = {key: [c for c in cfg[key] if "ray start" in c] for key in ("head_start_ray_commands", "worker_start_ray_commands")}
    assert all(out.values()), out
    return out


def environment_of_ray_start(command: str, home: Path) -> dict[str, str]:
    """Run a start command in bash with `ray` (and `ulimit`) replaced by functions that print what
    `ray start` would see: its environment."""
    probe = 'ray() { [ "$1" = start ] && env; }; ulimit() { :; }; ' + command
    proc = subprocess.run(["bash", "-c", probe], capture_output=True, text=True,
                          env={"HOME": str(home), "PATH": "/usr/bin:/bin", "RAY_HEAD_IP": "127.0.0.1"})
    assert proc.returncode == 0, proc.stderr
    return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)


@pytest.mark.parametrize("path", CONFIGS)
def test_every_node_starts_ray_with_token_auth_and_its_own_tmpdir(path: Path, tmp_path: Path) -> None:
    # docs/ray-optuna.md §8: one auth mode on every node, token; §11: Ray's locks in a per-account folder
    cfg = validated(raw(path))
    for key, commands in start_commands(cfg).items():
        for command in commands:
            env = environment_of_ray_start(command, tmp_path)
            assert env.get("RAY_AUTH_MODE") == "token", (key, command)
            assert env.get("TMPDIR") == str(tmp_path / ".gentune-tmp"), (key, command)
            assert (tmp_path / ".gentune-tmp").is_dir(), (key, command)
            # the mounted file of the cluster's own, never the token itself in the environment
            assert env.get("RAY_AUTH_TOKEN_PATH") == str(tmp_path / token_mount(cfg)[2:]), (key, command)
            assert "RAY_AUTH_TOKEN" not in env
            # Ray's Prometheus endpoints, which answer without the token, are off (tuner/study/driver.py says how)
            assert {k: env.get(k) for k in METRICS_OFF} == METRICS_OFF, (key, command)


def test_start_command_probe_catches_auth_disabled(tmp_path: Path) -> None:
    # bad input: a start command that turns auth off or forgets TMPDIR fails the check above
    env = environment_of_ray_start("export RAY_AUTH_MODE=disabled; ray start --head", tmp_path)
    assert env["RAY_AUTH_MODE"] == "disabled" and "TMPDIR" not in env


@pytest.mark.parametrize("path", CONFIGS)
def test_token_file_is_the_clusters_own_mounted_on_every_node_and_kept_private(path: Path, tmp_path: Path) -> None:
    cfg = validated(raw(path))
    token = token_mount(cfg)
    # file_mounts apply to the head and (through the head) to every worker; the local side is the
    # cluster's own token on the launching machine, never the account's shared one nor a repo file
    assert cfg["file_mounts"].get(token) == token
    assert not [(k, v) for k, v in cfg["file_mounts"].items() if SHARED_TOKEN in (k, v) or "auth_token" in k + v]
    # made the way the docs say, the file is the owner's only; the setup commands keep it so on the nodes
    home = tmp_path / "home"
    home.mkdir()
    made = subprocess.run([sys.executable, "-m", "tuner.config.cluster_token", token.replace("~", str(home), 1)],
                          cwd=ROOT, capture_output=True, text=True, env={"HOME": str(home), "PATH": "/usr/bin:/bin"})
    assert made.returncode == 0, made.stderr
    local = home / token[2:]
    assert stat.S_IMODE(local.stat().st_mode) == 0o600 and stat.S_IMODE(local.parent.stat().st_mode) == 0o700
    assert re.fullmatch(r"[0-9a-f]{64}", local.read_text())
    local.chmod(0o644)  # as a copy might arrive
    local.parent.chmod(0o755)
    for name, commands in effective_setup(cfg).items():
        chmods = [c for c in commands if "chmod" in c]
        assert chmods, name
        for command in chmods:
            subprocess.run(["bash", "-c", command], check=True, env={"HOME": str(home), "PATH": "/usr/bin:/bin"})
        assert stat.S_IMODE(local.stat().st_mode) == 0o600, name
        assert stat.S_IMODE(local.parent.stat().st_mode) == 0o700, name


@pytest.mark.parametrize("path", CONFIGS)
def test_setup_puts_token_auth_and_tmpdir_in_bashrc_once(path: Path, tmp_path: Path) -> None:
    # `ray submit`, `ray exec` and `ray attach` run their commands in a login shell that sources
    # ~/.bashrc: the driver and `ray status` get the same TMPDIR and auth mode as `ray start`
    cfg = validated(raw(path))
    for name, commands in effective_setup(cfg).items():
        home = tmp_path / name
        home.mkdir()
        lines = [c for c in commands if "bashrc" in c and "TMPDIR" in c]
        assert lines, name
        for _ in range(2):  # `ray up` runs setup again on every update: nothing may pile up
            for command in lines:
                subprocess.run(["bash", "-c", command], check=True, env={"HOME": str(home), "PATH": "/usr/bin:/bin"})
        bashrc = (home / ".bashrc").read_text()
        assert bashrc.count("TMPDIR") == 2 and bashrc.count("\n") == 1, bashrc  # one line, written once
        proc = subprocess.run(["bash", "-c", "source ~/.bashrc; echo $RAY_AUTH_MODE $TMPDIR $RAY_AUTH_TOKEN_PATH"],
                              capture_output=True, text=True, env={"HOME": str(home), "PATH": "/usr/bin:/bin"})
        assert proc.stdout.split() == ["token", str(home / ".gentune-tmp"), str(home / token_mount(cfg)[2:])]
        assert (home / ".gentune-tmp").is_dir()


def torch_install_of(cfg: dict[str, Any], gpu: bool, tmp_path: Path) -> list[list[str]]:
    """The `pip install` commands the setup commands run for torch on a node with or without a GPU:
    `pip` and `nvidia-smi` are bash functions that record their arguments."""
    log = tmp_path / f"pip-{gpu}.log"
    log.unlink(missing_ok=True)
    stubs = (f'pip() {{ echo "$@" >> {log}; }}; nvidia-smi() {{ return {0 if gpu else 9}; }}; '
             'python3() { :; }; sudo() { :; }; ')
    for command in cfg["setup_commands"]:
        if "torch" in command:
            subprocess.run(["bash", "-c", stubs + command], check=True, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.parametrize("path", CONFIGS)
def test_torch_build_follows_the_node(path: Path, tmp_path: Path) -> None:
    # PyPI's Linux torch is the CUDA build (~6.6 GB with its NVIDIA libraries): a node without a GPU
    # (the AWS head, a CPU lab machine) gets the CPU build from PyTorch's own index
    cfg = validated(raw(path))
    assert torch_install_of(cfg, gpu=True, tmp_path=tmp_path) == [["install", "torch", "torchvision"]]
    assert torch_install_of(cfg, gpu=False, tmp_path=tmp_path) == [
        ["install", "torch", "torchvision", "--index-url", "https://download.pytorch.org/whl/cpu"]]
    words = [shlex.split(c) if "torch" not in c else ["torch"] for c in cfg["setup_commands"]]
    assert words.index(["torch"]) < words.index(["pip", "install", "-e", PROJECT_MOUNT]), "torch before the project"


def test_local_head_only_cluster_needs_worker_ips_present() -> None:
    head_only = raw(LOCAL)
    head_only["provider"]["worker_ips"] = []
    validated(head_only)
    del head_only["provider"]["worker_ips"]
    with pytest.raises(Exception, match="worker_ips"):
        validated(head_only)


def test_no_auth_disabled_anywhere() -> None:
    paths = [AWS, LOCAL, DOCS, ROOT / "README.md", *sorted((ROOT / "tuner").rglob("*.py")),
             *sorted((ROOT / "benchmarks").glob("*.py"))]
    offenders = [str(p.relative_to(ROOT)) for p in paths if re.search(r"RAY_AUTH_MODE\s*=\s*['\"]?disabled", p.read_text())]
    assert offenders == []
    assert "RAY_AUTH_MODE=token" in AWS.read_text() and "RAY_AUTH_MODE=token" in LOCAL.read_text()


# ------------------------------------------------------------------------------------------
# docs/cluster.md stays true to the configs and to tuner/search.py


def test_docs_use_flags_that_search_py_has() -> None:
    from tuner.config.search import parser

    known = set(parser()._option_string_actions)
    text = DOCS.read_text().replace("\\\n", " ")
    lines = [line for line in text.splitlines() if "tuner/search.py" in line and " -- " in line]
    assert lines, "docs/cluster.md shows no search command"
    for line in lines:
        args = line.split(" -- ", 1)[1]
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", args):
            assert flag in known, f"docs/cluster.md uses {flag}, which tuner/search.py does not have"


def test_docs_say_what_the_launcher_needs() -> None:
    # what a lab meets when it runs `ray up` for real (docs/cluster.md, "What `ray up` needs, in the order you meet it")
    text = DOCS.read_text()
    for needle in ("rsync", "FileNotFoundError", "tmux", "ray exec cluster-local.yaml 'tmux kill-server'",
                   "~/.ssh/config", "worker_ips: []", "TMPDIR", "~/.gentune-tmp", "/tmp/_ray_lockfiles",
                   "python -m tuner.config.cluster_token ~/.gentune/gentune-lab.token", "~/.gentune/gentune.token",
                   "RAY_AUTH_MODE=token", "RAY_AUTH_TOKEN_PATH", "Rotate the token", "Revoke",
                   # the launcher's state folder, the same for every command, and the symptom without it
                   "export TMPDIR=$HOME/.gentune-tmp", "cluster-gentune-lab.state", "Head node of cluster (gentune-lab) not found!",
                   # ports: metrics off, what listens where, the node address
                   "RAY_enable_metrics_collection=0", "44227", "44217", "10001", "6379", "--node-ip-address",
                   # the CPU build of torch, and the first study's wait for the domain classifier
                   "https://download.pytorch.org/whl/cpu", "domain classifier"):
        assert needle in text, needle
    assert "disabled" not in text


def test_the_yamls_and_the_docs_name_the_same_launcher_state_folder() -> None:
    # `ray up` and every later command must see the same $TMPDIR ("Head node ... not found!" otherwise)
    line = "export TMPDIR=$HOME/.gentune-tmp; mkdir -p $TMPDIR"
    for path in (AWS, LOCAL, DOCS):
        assert line in path.read_text(), path.name


def test_docs_name_the_config_files_and_placeholders() -> None:
    text = DOCS.read_text()
    for needle in ("ray up cluster.yaml", "ray down cluster.yaml", "ray dashboard cluster.yaml",
                   "cluster-local.yaml", "s3://YOUR-BUCKET/gentune", "--resume", "ImageId",
                   raw(AWS)["available_node_types"]["gpu_worker"]["node_config"]["IamInstanceProfile"]["Name"]):
        assert needle in text, needle
