"""Scaling: Ray Tune trials per hour on one local Ray node vs two, and the scheduling overhead per trial.

    python benchmarks/scaling.py            # real run: about 5-10 min on 2 CPU cores
    python benchmarks/scaling.py --smoke    # tiny sizes (sleep trials only)

Two clusters made with ray.cluster_utils.Cluster, with equal CPUs per node:
  1 node:  a head node with --cpus-per-node CPUs (1 by default);
  2 nodes: the same head node plus a second node with as many CPUs.
Each runs the same Tune experiment (one trial per grid cell, 1 CPU per trial, FIFO), alternating
1-node / 2-node runs for --repeats rounds. Two fixed trainables, each timed inside the trial:
  dcgan: tuner.training.steps.gan_step on a tiny DCGAN (widths 16, batch 32, hinge) for --steps steps on a
         random uint8 tensor (no dataset), 1 torch thread: real compute, so trials on two "nodes"
         of one 2-core machine compete for the same cores;
  sleep: time.sleep(--sleep-s): no compute, so it isolates Ray's own scheduling cost.

trials/hour = trials / wall-clock of Tuner.fit(). Scheduling overhead per trial =
(wall-clock x concurrent slots - summed in-trial time) / trials, where slots = total CPUs / CPUs per
trial (1 node: 1 slot, so this is (wall - summed trial time) / trials; 2 nodes: 2 slots). It counts
actor start-up (a fresh Python worker per trial), Tune's bookkeeping and result reporting.

Targets: >= 1.8x trials/hour with two nodes; <= 1 s overhead per trial.
On a machine with 2 cores, both nodes share those 2 cores (with the Ray processes and anything else
running): the dcgan figures measure that contention, not a second machine.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SETUPS = ("1 node", "2 nodes")


def build_parser():
    p = common.parser(__doc__)
    p.add_argument("--trials", type=int, default=8, help="trials per run [default: 8]")
    p.add_argument("--repeats", type=int, default=2, help="rounds of (1 node, 2 nodes) runs per trainable [default: 2]")
    p.add_argument("--kinds", nargs="+", default=["dcgan", "sleep"], help="trainables: dcgan sleep [default: both]")
    p.add_argument("--steps", type=int, default=60, help="gan_step calls per dcgan trial [default: 60]")
    p.add_argument("--sleep-s", type=float, default=3.0, help="length of a sleep trial [default: 3]")
    p.add_argument("--cpus-per-node", type=int, default=1, help="CPUs of each node [default: 1]")
    p.add_argument("--reuse-actors", action=argparse.BooleanOptionalAction, default=True,
                   help="TuneConfig(reuse_actors=...): trials reuse worker processes [default: on, as tuner/search.py]")
    return p


def trainable(config: dict) -> None:
    """One trial; reports the seconds spent inside it and the node it ran on."""
    t0 = time.perf_counter()
    import ray
    from ray import tune

    if config["kind"] == "sleep":
        time.sleep(config["sleep_s"])
    else:
        sys.path.insert(0, config["root"])
        import torch

        from tuner.config import TrainConfig
        from tuner.training.steps import gan_step
        from tuner.training.trial import build_trial

        torch.set_num_threads(1)
        cfg = TrainConfig(loss="hinge", g_width=16, d_width=16, batch_size=32, device="cpu").resolved()
        trial = build_trial(cfg, torch.device("cpu"))
        images = torch.randint(0, 256, (1024, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        for _ in range(config["steps"]):
            gan_step(trial, images)
    tune.report({"trial_s": time.perf_counter() - t0, "node": ray.get_runtime_context().get_node_id()})


def start_cluster(nodes: int, cpus: int):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus, "include_dashboard": False})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=cpus)
    cluster.wait_for_nodes()
    return cluster


def run_once(nodes: int, kind: str, args, storage: str, tag: str) -> dict:
    import ray
    from ray import tune

    cluster = start_cluster(nodes, args.cpus_per_node)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        space = {"i": tune.grid_search(list(range(args.trials))), "kind": kind, "steps": args.steps,
                 "sleep_s": args.sleep_s, "root": str(common.ROOT)}
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": 1}),
            param_space=space,
            tune_config=tune.TuneConfig(reuse_actors=args.reuse_actors),
            run_config=tune.RunConfig(name=tag, storage_path=storage, verbose=0),
        )
        with common.Timer() as t:
            results = tuner.fit()
        errors = [r.error for r in results if r.error]
        if errors:
            raise RuntimeError(f"{len(errors)} trial(s) failed: {errors[0]}")
        trial_s = [r.metrics["trial_s"] for r in results]
        used_nodes = {r.metrics["node"] for r in results}
    finally:
        ray.shutdown()
        cluster.shutdown()
    slots = nodes * args.cpus_per_node  # 1 CPU per trial
    return {"wall": t.s, "trial_sum": sum(trial_s), "trials": len(trial_s), "slots": slots, "nodes_used": len(used_nodes),
            "per_hour": len(trial_s) / t.s * 3600, "overhead": (t.s * slots - sum(trial_s)) / len(trial_s),
            "trial_mean": sum(trial_s) / len(trial_s)}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.smoke:
        args.trials, args.repeats, args.kinds, args.sleep_s = 2, 1, ["sleep"], 0.2
    storage = tempfile.mkdtemp(prefix="gentune-bench-scaling-")
    # Token authentication (docs/ray-optuna.md §8). ray.cluster_utils.Cluster does not turn it on by
    # itself (only ray.init(address="local") does): set the mode for every node and the driver, and
    # give the throwaway clusters their own token unless one is configured. Before ray is imported: Ray
    # reads the mode once, at import.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        token = Path(storage) / "auth_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)
    runs: dict[tuple[str, str], list[dict]] = {}
    load = common.LoadMonitor()
    with load:
        for kind in args.kinds:
            for r in range(args.repeats):
                order = (1, 2) if r % 2 == 0 else (2, 1)  # interleaved, order alternated
                for nodes in order:
                    res = run_once(nodes, kind, args, storage, f"{kind}-{nodes}n-{r}")
                    print(f"{kind} {nodes} node(s) round {r}: {res['wall']:.1f} s wall, {res['per_hour']:.0f} trials/h, "
                          f"overhead {res['overhead']:.2f} s/trial", flush=True)
                    runs.setdefault((kind, SETUPS[nodes - 1]), []).append(res)

    rows, targets = [], []
    for kind in args.kinds:
        med = {}
        for setup in SETUPS:
            rs = runs[(kind, setup)]
            med[setup] = {k: common.median(r[k] for r in rs) for k in ("per_hour", "overhead", "wall", "trial_mean")}
            rows.append([kind, setup, rs[0]["slots"], max(r["nodes_used"] for r in rs), rs[0]["trials"],
                         med[setup]["trial_mean"], med[setup]["wall"], med[setup]["per_hour"],
                         common.spread(r["per_hour"] for r in rs), med[setup]["overhead"]])
        speedup = med["2 nodes"]["per_hour"] / med["1 node"]["per_hour"]
        rows[-1].append(f"{speedup:.2f}x")
        rows[-2].append("1.00x")
        worst = max(m["overhead"] for m in med.values())
        targets.append([kind, "trials/hour, 2 nodes vs 1", f"{speedup:.2f}x", "≥ 1.8x", common.verdict(speedup >= 1.8)])
        targets.append([kind, "scheduling overhead per trial (worse setup)", f"{worst:.2f} s", "≤ 1 s", common.verdict(worst <= 1.0)])

    kinds = {"dcgan": f"dcgan = {args.steps} gan_step calls of a width-16 hinge DCGAN, batch 32, 1 thread",
             "sleep": f"sleep = time.sleep({args.sleep_s:g})"}
    blocks = [
        f"{args.trials} trials per run, 1 CPU per trial, {args.cpus_per_node} CPU(s) per node, {args.repeats} interleaved "
        f"round(s) per setup (medians), reuse_actors={args.reuse_actors}. Trainables: " + "; ".join(kinds[k] for k in args.kinds) + ". "
        f"This machine has {os.cpu_count()} cores: the two local nodes share them (with Ray's own processes and any "
        "other work on the machine), so dcgan trials on two nodes compete for the same cores.",
        common.table(["trainable", "setup", "slots", "nodes used", "trials", "in-trial s (mean)", "wall s",
                      "trials/hour", "range", "overhead s/trial", "vs 1 node"], rows),
        "Targets:\n\n" + common.table(["trainable", "figure", "measured", "target", "verdict"], targets),
        "Overhead per trial = (wall x slots - summed in-trial time) / trials; the in-trial time starts at the "
        "trainable's first line, so a fresh worker's start-up and imports before it count as overhead.",
    ]
    shutil.rmtree(storage, ignore_errors=True)
    common.publish(common.section("scaling: Ray Tune trials/hour on 1 vs 2 local nodes", args.smoke, blocks, load), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
