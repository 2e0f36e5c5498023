"""Token authentication, run for real: Ray as gentune starts it refuses clients without the token.

Two ways gentune starts Ray, each checked on this machine with loopback addresses only:
  (a) a local study: `tuner.search.init_ray` in a subprocess, as `python tuner/search.py` runs it;
  (b) a cluster: a head and a worker started by cluster-local.yaml's own start commands, run with
      bash, each "machine" with its own $HOME holding the cluster's token where the yaml's file_mounts
      put it (~/.gentune/gentune-lab.token). Then a tiny study runs on it through
      `tuner/search.py --address auto`, in the environment the yaml's ~/.bashrc line gives it.
For each: a client without a token, or with a wrong one, is refused (raw gRPC to the GCS,
`ray.init`, `ray status`, and the dashboard's HTTP API where ray[default] is installed), and the
right token is accepted (the positive control: the refusals are about the token, not a dead port).
Then every TCP port the processes listen on (`ss -ltnp`) is probed: bound to loopback only, or it
refuses a request without the token (HTTP 401/403, gRPC UNAUTHENTICATED); no Prometheus metrics
anywhere. Requests go to 127.0.0.1 only; a socket bound to the node's network address alone is judged
by its bind address. With ray[default] installed (the dev extras, as on the cluster) this covers
the dashboard, the agents and the metrics endpoints; with plain ray, Ray starts fewer servers.
Ray's usage-stats report (a call to usage-stats.ray.io) is turned off: loopback only.

Every Ray process here is started in a subprocess with its own $HOME (under a short /tmp folder:
Ray's socket paths must fit in 107 characters) and no RAY_AUTH_* variables from the test session
(conftest.py's session token), so only the files the yaml and Ray use are in play. The pytest
process never starts Ray itself, so this module runs in the main pytest process. Cleanup is by PID:
every process whose environment holds one of this test's $HOME folders. `ray stop` is never run: it
stops every Ray process of the account on the machine.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import importlib
import importlib.util
import os
import pkgutil
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
import yaml
from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

from conftest import REPO, TINY_TRIAL as TINY
from tuner.results.exports import read_trials_csv

LOCAL_YAML = REPO / "cluster-local.yaml"
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", "RAY_TMPDIR", "TMPDIR")
REFUSED = "InvalidAuthToken"  # what Ray's GCS answers a request without the right token


# ------------------------------------------------------------------------------------------
# helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def yaml_token_mount() -> str:
    """Where cluster-local.yaml's file_mounts put the cluster's token on every node (~/...)."""
    mounts = yaml.safe_load(LOCAL_YAML.read_text())["file_mounts"]
    tokens = [remote for remote in mounts if remote.endswith(".token")]
    assert len(tokens) == 1 and tokens[0].startswith("~/"), mounts
    return tokens[0]


def machine_home(root: Path, name: str, token: str | None) -> Path:
    """A simulated machine's $HOME; with a token, where the yaml's file_mounts copy it (mode 0600)."""
    home = root / name
    home.mkdir()
    if token is not None:
        path = home / yaml_token_mount()[2:]
        path.parent.mkdir(mode=0o700, parents=True)
        path.write_text(token)
        path.chmod(0o600)
    return home


def bashrc_env(home: Path) -> dict[str, str]:
    """What the yaml's ~/.bashrc line exports on a node (`ray submit` runs the driver in that shell)."""
    setup = yaml.safe_load(LOCAL_YAML.read_text())["setup_commands"]
    lines = [m.group(1) for c in setup if "bashrc" in c and "TMPDIR" in c for m in [re.search(r"echo '([^']*)' >> ~/.bashrc", c)] if m]
    assert len(lines) == 1, setup
    proc = subprocess.run(["bash", "-c", lines[0] + "; env -0"], capture_output=True, text=True, check=True,
                          env={"HOME": str(home), "PATH": "/usr/bin:/bin"})
    exported = dict(item.split("=", 1) for item in proc.stdout.split("\0") if "=" in item)
    return {k: exported[k] for k in (*AUTH_VARS, "TMPDIR") if k in exported}


def env_for(home: Path, **extra: str) -> dict[str, str]:
    """The test's environment (data, PATH) without any Ray auth setting, with HOME=home."""
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env.update(HOME=str(home), PYTHONPATH=pythonpath, PYTHONUNBUFFERED="1", RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}")
    env.update(extra)
    return env


def processes_of(homes: list[Path]) -> list[int]:
    """Every process started with one of these $HOME folders, and their descendants: Ray's agents
    rename themselves (setproctitle), which overwrites the environment that /proc shows."""
    markers = [f"HOME={h}".encode() for h in homes]
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(m in environ for m in markers):
            found.add(int(entry.name))
    todo = list(found)
    while todo:
        for children in Path(f"/proc/{todo.pop()}/task").glob("*/children"):
            try:
                pids = {int(c) for c in children.read_text().split()} - found - {os.getpid()}
            except OSError:
                continue
            found |= pids
            todo.extend(pids)
    return sorted(found)


def environ_of(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.decode(errors="replace").split("=", 1) for item in raw.split(b"\0") if b"=" in item)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "(ended)"


def stop_processes(homes: list[Path]) -> None:
    """SIGTERM every process started with one of these homes, then SIGKILL what is left after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        for pid in processes_of(homes):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while processes_of(homes) and time.monotonic() < deadline:
            time.sleep(0.2)
    assert not processes_of(homes), "Ray processes of this test survived SIGKILL"


def gcs_call(port: int, token: str | None, method: str = "GetClusterId"):
    """One raw gRPC call to the GCS on loopback; returns the reply or the grpc.RpcError."""
    metadata = [("authorization", f"Bearer {token}")] if token is not None else None
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        request = {"GetClusterId": gcs_service_pb2.GetClusterIdRequest,
                   "GetAllNodeInfo": gcs_service_pb2.GetAllNodeInfoRequest}[method]()
        try:
            return getattr(stub, method)(request, timeout=10, metadata=metadata)
        except grpc.RpcError as err:
            return err


def alive_nodes(port: int, token: str) -> int:
    reply = gcs_call(port, token, "GetAllNodeInfo")
    assert not isinstance(reply, grpc.RpcError), reply
    return sum(1 for node in reply.node_info_list if node.state == 0)  # GcsNodeState.ALIVE


CLIENT = """
import sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)
print("CONNECTED", len([n for n in ray.nodes() if n["Alive"]]))
"""


def ray_client(port: int, home: Path, **env: str) -> subprocess.CompletedProcess:
    """`ray.init(address="127.0.0.1:PORT")` in a subprocess (2 connection attempts, not 20)."""
    return subprocess.run([sys.executable, "-c", CLIENT, f"127.0.0.1:{port}"], cwd=home,
                          env=env_for(home, RAY_NUM_REDIS_GET_RETRIES="2", **env),
                          capture_output=True, text=True, timeout=120)


def assert_refuses_clients_without_the_token(port: int, token: str, root: Path) -> None:
    stranger = machine_home(root, f"stranger-{port}", token=None)
    # raw gRPC: no token, a wrong token -> UNAUTHENTICATED; the right one -> an answer
    for bad in (None, "wrong", secrets.token_hex(32)):
        reply = gcs_call(port, bad)
        assert isinstance(reply, grpc.RpcError), f"GCS answered a client with token {bad!r}"
        assert reply.code() == grpc.StatusCode.UNAUTHENTICATED and REFUSED in reply.details()
    assert not isinstance(gcs_call(port, token), grpc.RpcError)
    # ray.init without a token (auth mode unset: Ray sends none to an explicit address), with a wrong one
    for env in ({}, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "wrong"}):
        proc = ray_client(port, stranger, **env)
        assert proc.returncode != 0 and "CONNECTED" not in proc.stdout, (env, proc.stdout)
        assert REFUSED in proc.stderr, (env, proc.stderr[-2000:])
    # `ray status` without a token
    proc = subprocess.run([str(Path(sys.executable).parent / "ray"), "status", f"--address=127.0.0.1:{port}"],
                          cwd=stranger, env=env_for(stranger), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and REFUSED in proc.stderr, proc.stdout + proc.stderr[-2000:]
    # the right token connects (the same client code, so the refusals above are about the token)
    proc = ray_client(port, stranger, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    assert proc.returncode == 0 and "CONNECTED" in proc.stdout, proc.stderr[-2000:]


# ------------------------------------------------------------------------------------------
# every listening port of a set of processes, and what it answers a client without the token


@dataclass(frozen=True)
class Listener:
    address: str  # as `ss` prints it: 127.0.0.1, 0.0.0.0, *, [::], [::ffff:127.0.0.1], 192.0.2.2
    port: int
    pid: int
    name: str

    @property
    def loopback(self) -> bool:
        host = self.address.strip("[]").removeprefix("::ffff:")
        return host == "::1" or host.startswith("127.")

    @property
    def wildcard(self) -> bool:  # every interface, loopback included
        return self.address in ("*", "0.0.0.0", "[::]", "::")


def listeners(pids: list[int]) -> list[Listener]:
    """The TCP sockets these processes listen on (`ss -ltnp`, run as the test's own user)."""
    proc = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, timeout=30, check=True)
    return parse_ss(proc.stdout, set(pids))


def parse_ss(text: str, pids: set[int]) -> list[Listener]:
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6:
            continue
        address, _, port = fields[3].rpartition(":")
        for name, pid in re.findall(r'\("([^"]*)",pid=(\d+)', " ".join(fields[5:])):
            if int(pid) in pids:
                found.append(Listener(address, int(port), int(pid), name))
    return found


# Tokenless gRPC calls that a token-checking Ray server refuses with UNAUTHENTICATED before it reads
# the (empty) request: the first method of every service in Ray's generated code, and the object
# manager's, whose service the raylet binary has but Python does not. A server refuses a method it
# serves and answers UNIMPLEMENTED for the others.
def grpc_methods() -> list[str]:
    import ray.core.generated as generated

    methods = ["/ray.rpc.ObjectManagerService/Pull"]
    for module in pkgutil.iter_modules(generated.__path__):
        if module.name.endswith("_pb2"):
            descriptor = importlib.import_module(f"ray.core.generated.{module.name}").DESCRIPTOR
            methods += [f"/{s.full_name}/{s.methods[0].name}" for s in descriptor.services_by_name.values()]
    return methods


def tokenless_grpc(port: int, methods: list[str]) -> set[str]:
    """The status codes of tokenless calls on 127.0.0.1:port (UNIMPLEMENTED left out)."""
    codes = set()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        for method in methods:
            try:
                channel.unary_unary(method)(b"", timeout=5)
                codes.add("OK")
            except grpc.RpcError as err:
                codes.add(err.code().name)
    return codes - {"UNIMPLEMENTED"}


def tokenless_http(port: int, path: str) -> tuple[int, str]:
    """(status, start of the body) of a tokenless GET on 127.0.0.1:port; (0, error) when the server does
    not speak HTTP/1.1 (a gRPC server) or closes the connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read(200).decode(errors="replace")
    except (OSError, http.client.HTTPException) as err:
        return 0, repr(err)
    finally:
        conn.close()


# Bound to the node's address only, so a loopback-only test cannot reach it: Ray's runtime-env agent,
# an HTTP server behind Ray's token middleware (checked in Ray's source below).
UNREACHABLE_BUT_TOKEN_CHECKED = ("ray::RuntimeEnv",)


def runtime_env_agent_checks_the_token() -> bool:
    # read, not imported: importing it puts Ray's bundled aiohttp on sys.path, and the dashboard check
    # of the cluster test would then take this process for one with ray[default]
    import ray

    source = Path(ray.__file__).parent / "_private" / "runtime_env" / "agent" / "main.py"
    return "middlewares=[get_token_auth_middleware(" in source.read_text()


def open_ports(found: list[Listener]) -> list[str]:
    """What answers a client without the token, on a non-loopback interface, or serves Prometheus
    metrics anywhere. Requests go to 127.0.0.1 only: a socket bound to every interface is reached
    there; one bound to the node's address is reached through the same process's loopback socket on
    that port, where it has one."""
    methods = grpc_methods()
    problems = []
    for sock in found:
        where = f"{sock.name} (pid {sock.pid}) on {sock.address}:{sock.port}"
        reachable = sock.loopback or sock.wildcard or any(
            o.loopback and (o.pid, o.port) == (sock.pid, sock.port) for o in found)
        if reachable:
            status, body = tokenless_http(sock.port, "/metrics")
            if 200 <= status < 300 and ("# HELP" in body or "# TYPE" in body):
                problems.append(f"{where}: Prometheus metrics without a token")
                continue
        if sock.loopback:
            continue
        if not reachable:
            if not (sock.name.startswith(UNREACHABLE_BUT_TOKEN_CHECKED) and runtime_env_agent_checks_the_token()):
                problems.append(f"{where}: bound to a non-loopback address only, not known to check the token")
            continue
        status, body = tokenless_http(sock.port, "/")
        if status in (401, 403):
            continue  # an HTTP server that asks for the token
        if status:
            problems.append(f"{where}: HTTP {status} without a token: {body[:80]!r}")
            continue
        codes = tokenless_grpc(sock.port, methods)
        if codes != {"UNAUTHENTICATED"}:
            if "UNAVAILABLE" in codes and sock not in listeners([sock.pid]):
                continue  # it closed meanwhile (an idle Ray worker exits): nothing listens there now
            problems.append(f"{where}: tokenless gRPC calls gave {sorted(codes) or 'only UNIMPLEMENTED'}")
    return problems


def assert_no_open_port(homes: list[Path], must_include: int) -> None:
    found = listeners(processes_of(homes))
    listing = "\n".join(f"  {s.address}:{s.port} {s.name} (pid {s.pid})" for s in found)
    assert must_include in {s.port for s in found}, f"the GCS port {must_include} is not in the listing:\n{listing}"
    problems = open_ports(found)
    assert not problems, "\n".join(problems) + f"\nall listening sockets:\n{listing}"


def wait_for(predicate, timeout: float, what: str, fail: bool = True):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    if fail:
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
    return None


@pytest.fixture
def short_root():
    root = Path(tempfile.mkdtemp(prefix="gts", dir="/tmp"))  # short: Ray's socket paths live under it
    yield root
    shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------------------
# (a) a local study's Ray


LOCAL_DRIVER = """
import os, sys
import ray
from tuner.config.search import SearchConfig
from tuner.study.assembly import init_ray
init_ray(SearchConfig())
node = ray._private.worker._global_node
print(os.environ.get("RAY_AUTH_MODE"), node.gcs_address, file=open(sys.argv[1] + ".tmp", "w"), flush=True)
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
sys.stdin.read()  # hold Ray until the test closes stdin
"""


@pytest.mark.slow
def test_local_study_ray_refuses_clients_without_its_token(short_root: Path):
    home = machine_home(short_root, "local", token=None)  # no token yet: Ray makes one, as for a new user
    ready = home / "ready"
    log = open(home / "driver.log", "w")
    driver = subprocess.Popen([sys.executable, "-c", LOCAL_DRIVER, str(ready)], cwd=REPO, stdin=subprocess.PIPE,
                              stdout=log, stderr=subprocess.STDOUT, env=env_for(home, TMPDIR=str(home)))
    try:
        wait_for(lambda: ready.exists() or driver.poll() is not None, 120, "the local Ray")
        assert driver.poll() is None, (home / "driver.log").read_text()[-3000:]
        mode, address = ready.read_text().split()
        assert mode == "token"  # init_ray keeps Ray's default, never "disabled"
        token = (home / ".ray" / "auth_token").read_text().strip()  # made by Ray on first use
        assert re.fullmatch(r"[0-9a-f]{64}", token)
        assert_refuses_clients_without_the_token(int(address.rsplit(":", 1)[1]), token, short_root)
        assert_no_open_port([home], must_include=int(address.rsplit(":", 1)[1]))
    finally:
        driver.stdin.close()
        try:
            driver.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        stop_processes([home])
        log.close()


# ------------------------------------------------------------------------------------------
# (b) a cluster started by the yaml's own start commands


def yaml_start_command(key: str, port: int, extra: list[str]) -> str:
    """The yaml's `ray start` command for a head or a worker, adapted to run beside others on one machine:
    - the `ray stop` commands are left out (they stop every Ray process of the account here);
    - the GCS port 6379 becomes a free port, and fixed default ports get free ones (`extra`);
    - --autoscaling-config is dropped: `ray up` writes that file, and no autoscaler runs here.
    $RAY_HEAD_IP is set in the environment, as the cluster launcher does."""
    commands = [c for c in yaml.safe_load(LOCAL_YAML.read_text())[key] if c.strip() != "ray stop"]
    assert len(commands) == 1 and "ray start" in commands[0], commands
    command = commands[0].replace("6379", str(port))
    command = re.sub(r"\s--autoscaling-config=\S+", "", command)
    return command + " " + " ".join(extra)


def run_start(command: str, home: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=home, capture_output=True, text=True, timeout=180,
                          env=env_for(home, RAY_HEAD_IP="127.0.0.1", **env))


@pytest.mark.slow
def test_cluster_from_the_yaml_start_commands_runs_a_study_and_refuses_strangers(short_root: Path, idx_mnist: Path,
                                                                                  tmp_path: Path):
    token = secrets.token_hex(32)  # what `ray get-auth-token --generate` writes on the launching machine
    head = machine_home(short_root, "head", token)
    worker = machine_home(short_root, "worker", token)
    impostor = machine_home(short_root, "impostor", secrets.token_hex(32))  # a node with another token
    homes = [head, worker, impostor]
    port, dashboard = free_port(), free_port()
    try:
        head_cmd = yaml_start_command("head_start_ray_commands", port, [
            f"--dashboard-port={dashboard}", f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}", "--num-cpus=2"])
        proc = run_start(head_cmd, head)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        # the yaml's TMPDIR took effect: Ray's session (and its locks) are in the account's own folder
        assert list((head / ".gentune-tmp" / "ray").glob("session_2*"))

        worker_cmd = yaml_start_command("worker_start_ray_commands", port, [
            f"--dashboard-agent-listen-port={free_port()}", "--num-cpus=1"])
        proc = run_start(worker_cmd, worker)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        wait_for(lambda: alive_nodes(port, token) == 2, 60, "the worker to join")  # the token holder joins
        # each node's network services (GCS, raylet) run with token auth and that node's own TMPDIR
        # (a worker keeps its session files in the head's temp folder path: Ray's choice)
        for home, services in ((head, {"gcs_server", "raylet"}), (worker, {"raylet"})):
            environs = {pid: environ_of(pid) for pid in processes_of([home])
                        if Path(cmdline(pid).split(" ", 1)[0]).name in services}
            assert len(environs) == len(services), [cmdline(pid) for pid in processes_of([home])]
            for pid, env in environs.items():
                assert (env.get("RAY_AUTH_MODE"), env.get("TMPDIR")) == ("token", str(home / ".gentune-tmp")), cmdline(pid)
                assert env.get("RAY_AUTH_TOKEN_PATH") == str(home / yaml_token_mount()[2:]), cmdline(pid)
                assert env.get("RAY_enable_metrics_collection") == "0", cmdline(pid)

        # a node with another token cannot join
        proc = run_start(worker_cmd, impostor, RAY_NUM_REDIS_GET_RETRIES="2")
        assert proc.returncode != 0 and REFUSED in proc.stdout + proc.stderr, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert alive_nodes(port, token) == 2

        assert_refuses_clients_without_the_token(port, token, short_root)

        # the dashboard's HTTP API (on loopback) asks for the token too; it needs ray[default] (aiohttp),
        # without which Ray runs no HTTP dashboard at all
        if importlib.util.find_spec("aiohttp") is not None:
            url = f"http://127.0.0.1:{dashboard}/api/jobs/"
            seen: list[int] = []
            if not wait_for(lambda: seen.append(dashboard_status(url, token)) or seen[-1] == 200, 60, "", fail=False):
                logs = sorted((head / ".gentune-tmp" / "ray").glob("session_2*/logs/dashboard.*"))
                pytest.fail(f"dashboard answered {sorted(set(seen))}; {[(p.name, p.read_text()[-1500:]) for p in logs]}")
            assert dashboard_status(url, None) in (401, 403)
            assert dashboard_status(url, "wrong") in (401, 403)

        # a tiny study, the way `ray submit ... -- --address auto` runs it on the head: the head's
        # $HOME, and what the yaml's ~/.bashrc line exports there (TMPDIR, token auth with the cluster's token)
        store = tmp_path / "store"
        driver = subprocess.run(
            [sys.executable, "tuner/search.py", "--address", "auto", "--storage-path", str(store), "--name", "sec",
             *TINY, "--losses", "hinge", "--ranges", "g_width=8:8", "d_width=8:8", "batch_size=16,32",
             "--num-samples", "2", "--max-concurrent", "2", "--max-kimg", "0.25", "--eval-every-kimg", "0.25",
             "--grace-kimg", "0.25"],
            cwd=REPO, env=env_for(head, **bashrc_env(head)), capture_output=True, text=True, timeout=300)
        assert driver.returncode == 0, driver.stdout[-3000:] + driver.stderr[-3000:]
        assert "Connected to Ray cluster" in driver.stdout + driver.stderr  # joined, did not start its own
        trials = read_trials_csv(store / "sec" / "trials.csv")
        assert len(trials) == 2 and trials["status"].isin(["completed", "pruned"]).all()

        # every port the head's and the worker's processes listen on (GCS, raylets, agents, Ray Client,
        # dashboard, the workers the study left): loopback only, or refusing a client without the token
        assert_no_open_port([head, worker], must_include=port)
    finally:
        stop_processes(homes)


def dashboard_status(url: str, token: str | None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
    try:
        with opener.open(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


class _OpenHandler(BaseHTTPRequestHandler):
    """An HTTP server that answers anyone: Prometheus text at /metrics, a page at /."""

    def do_GET(self):
        body = b"# HELP up 1\n# TYPE up gauge\nup 1\n" if self.path == "/metrics" else b"hello"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _AnswersAnything(grpc.GenericRpcHandler):
    def service(self, handler_call_details):
        return grpc.unary_unary_rpc_method_handler(lambda request, context: b"")


def test_port_probe_catches_what_answers_without_a_token():
    # bad input for the probe of the tests above: servers on 127.0.0.1 that answer anyone, presented
    # as bound to every interface; no traffic leaves loopback
    http_server = ThreadingHTTPServer(("127.0.0.1", 0), _OpenHandler)
    threading.Thread(target=http_server.serve_forever, daemon=True).start()
    grpc_server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2), handlers=[_AnswersAnything()])
    grpc_port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    try:
        me, http_port = os.getpid(), http_server.server_address[1]
        # `ss` sees both, on loopback
        mine = {s.port: s.loopback for s in listeners([me])}
        assert mine.get(http_port) is True and mine.get(grpc_port) is True, mine
        [metrics] = open_ports([Listener("0.0.0.0", http_port, me, "python3")])
        assert "Prometheus metrics without a token" in metrics
        _OpenHandler.do_GET, original = (lambda self: _OpenHandler.send_error(self, 404) if self.path == "/metrics"
                                         else original(self)), _OpenHandler.do_GET
        try:
            [page] = open_ports([Listener("*", http_port, me, "python3")])
        finally:
            _OpenHandler.do_GET = original
        assert "HTTP 200 without a token" in page
        [rpc] = open_ports([Listener("[::]", grpc_port, me, "python3")])
        assert "tokenless gRPC calls gave ['OK']" in rpc
        # bound to a non-loopback address only: flagged without a request (unless it is Ray's runtime-env agent)
        [elsewhere] = open_ports([Listener("192.0.2.2", 9, me, "python3")])
        assert "non-loopback address only" in elsewhere
        assert open_ports([Listener("127.0.0.1", grpc_port, me, "python3")]) == []  # loopback: allowed
    finally:
        http_server.shutdown()
        grpc_server.stop(None)


def test_ss_lines_are_read():
    text = ('LISTEN 0 4096 *:46379 *:* users:(("gcs_server",pid=4733,fd=44))\n'
            'LISTEN 0 4096 [::ffff:127.0.0.1]:10001 *:* users:(("python3",pid=4766,fd=15))\n'
            'LISTEN 0 128 192.0.2.2:46257 0.0.0.0:* users:(("ray::RuntimeEnv",pid=4826,fd=27),("x",pid=5,fd=1))\n'
            'LISTEN 0 128 0.0.0.0:2024 0.0.0.0:*\n')
    found = parse_ss(text, {4733, 4766, 4826})
    assert [(s.address, s.port, s.pid, s.name, s.loopback, s.wildcard) for s in found] == [
        ("*", 46379, 4733, "gcs_server", False, True), ("[::ffff:127.0.0.1]", 10001, 4766, "python3", True, False),
        ("192.0.2.2", 46257, 4826, "ray::RuntimeEnv", False, False)]


def test_nothing_switches_token_authentication_off():
    # not the code, the cluster yamls and docs, nor any test (a test must fix what fails, not the default)
    root = Path(__file__).resolve().parent.parent
    offenders = []
    for path in [*root.glob("tuner/**/*.py"), *root.glob("analysis/*.py"), *root.glob("benchmarks/*.py"),
                 *root.glob("tests/**/*.py"), *root.glob("*.yaml"), *root.glob("docs/*.md"), root / "README.md"]:
        text = path.read_text()
        for needle in ("RAY_AUTH_MODE=disabled", 'RAY_AUTH_MODE="disabled"', "RAY_AUTH_MODE='disabled'",
                       '"RAY_AUTH_MODE": "disabled"'):
            # this test names them; test_cluster_yaml feeds one to its environment reader as input
            if needle in text and path.name != "test_security.py" and not (
                    path.name == "test_cluster_yaml.py" and needle == "RAY_AUTH_MODE=disabled"):
                offenders.append(f"{path.relative_to(root)}: {needle}")
    assert not offenders, offenders
