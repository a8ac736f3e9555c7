"""A scaling model of hpcrl: predicted throughput and the first bottleneck at 256 to 16,384 ranks.

    python -m benchmarks.scale_model                 # tables from the committed constants (no measurement)
    python -m benchmarks.scale_model --measure       # re-measure this machine's constants first (~30 s)
    python -m benchmarks.scale_model --json out.json # also write every prediction as JSON

The model is a set of per-role capacities (frames per second each role can sustain) fitted to constants
measured on this machine: env step time, inference and SGD cost of the two models, the CPU cost of a
channel message and of a control message, channel bandwidth, allreduce bandwidth, and the leader's cost
per weight publication. Where hpcrl cannot measure something here (a cluster fabric, a GPU), the model
uses published figures, each with its source (``ASSUMED``). docs/scaling.md explains the model and
quotes its output.

Throughput is the minimum of:

- **actors**: ``A / t_actor`` with ``t_actor`` the CPU time an actor spends per frame (env step, inline
  inference or the request/reply messages, fragment sends, loading new weights);
- **inference**: ``I x`` what one inference rank sustains (batched rollouts plus one message in and one
  out per request);
- **trainers**: what ``T`` trainer ranks consume (SGD per frame, ingesting fragments, one allreduce per
  minibatch, the leader's publication and control-plane work, which every trainer waits for in the
  allreduce);
- **network**: the frames whose fragments leave a node, at the fabric's bandwidth per node.

The layout (trainer count, inference ranks) is chosen per rank count to maximise the prediction, as a
user tuning the run would. Ranks are CPU cores (one rank per core) unless GPU trainers are modelled.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, BenchResult, load_avg, machine_info, save_result

__all__ = ["ASSUMED", "Constants", "Prediction", "Workload", "predict", "load_constants", "main"]

#: published figures the model uses where this machine cannot measure (value, unit, source).
ASSUMED: dict[str, tuple[float, str, str]] = {
    "net_bw": (12.5e9, "B/s per node", "InfiniBand HDR100 / EDR: 100 Gb/s per port (IBTA link rates)"),
    "net_lat": (2e-6, "s", "MPI point-to-point latency over InfiniBand, small messages: 1-2 us (OSU benchmarks)"),
    "gpu_flops": (19.5e12, "FLOP/s", "NVIDIA A100 datasheet: 19.5 TFLOP/s FP32 (non-tensor-core)"),
    "gpu_util": (0.3, "", "assumed fraction of peak a small RL model reaches (kernel sizes of 256-row minibatches)"),
    "gpu_launch": (0.5e-3, "s", "assumed floor per minibatch update on a GPU (~50 kernel launches of ~10 us)"),
    "impala_fps": (250_000.0, "frames/s", "IMPALA (Espeholt et al. 2018, arXiv:1802.01561), abstract"),
}


@dataclass(frozen=True)
class Constants:
    """What was measured on this machine (seconds, bytes per second); see :func:`measure`."""

    cartpole_env: float = 5.7e-6
    """CartPole-v1 step, one env (benchmarks/results/limits)."""
    cartpole_infer_b8: float = 170e-6
    """Actor-critic 2x64 MLP rollout for 8 envs, one call (limits)."""
    cartpole_sgd_frame: float = 32e-6
    """PPO SGD per frame, 4 epochs (limits: one 1024-row update / 1024)."""
    atari_env: float = 400e-6
    """Pong step with preprocessing and frame stack (env_step)."""
    atari_infer_b8: float = 4e-3
    """Nature CNN actor-critic rollout for 8 envs on one CPU thread (measured by --measure)."""
    atari_infer_row: float = 0.45e-3
    """Marginal CPU cost per extra row in a batched Nature CNN rollout (--measure)."""
    atari_sgd_frame: float = 8e-3
    """Nature CNN PPO SGD per frame on one CPU thread, 4 epochs (--measure)."""
    msg_cpu: float = 4.2e-6
    """CPU per channel message (send + receive, 1 KiB; channel)."""
    ctl_cpu: float = 20e-6
    """CPU per control message (small JSON dict, send + receive; --measure)."""
    shm_bw: float = 10e9
    """Channel bandwidth on one node, large messages (channel)."""
    allreduce_bw: float = 1.0e9
    """Allreduce algorithm bandwidth of 2 CPU ranks on one node (allreduce: 40 MB float32)."""
    publish_bw: float = 10e9
    """Leader bytes per second when it starts a publication's sends (publish; memcpy-bound here)."""
    sources: dict[str, str] = field(default_factory=dict)
    """Where each value came from (result file or 'default')."""


@dataclass(frozen=True)
class Workload:
    """Per-frame costs and sizes of one task."""

    name: str
    env: float
    """CPU seconds per env step."""
    infer_b8: float
    """CPU seconds per rollout call of 8 rows."""
    infer_row: float
    """Marginal CPU seconds per extra row of a batched rollout."""
    sgd_frame_cpu: float
    """Trainer CPU seconds per frame (all epochs)."""
    gpu_flop_frame: float
    """Training FLOPs per frame on a GPU (all epochs: forward + backward ~ 3x forward)."""
    obs_bytes: int
    """Bytes per frame of a fragment (observation, action, reward, flags, log-prob, value)."""
    model_bytes: int
    """Bytes of one weight publication."""
    envs_per_actor: int = 8
    fragment: int = 128
    minibatches_per_step: int = 16
    """Allreduces per trainer step (epochs x minibatches)."""
    frames_per_trainer_step: int = 1024
    """Frames each trainer rank consumes per step."""


def workloads(c: Constants) -> list[Workload]:
    """The CartPole-like and the Atari-like workloads, with this machine's constants."""
    cartpole = Workload(
        "CartPole-like (2x64 MLP, 4-float obs)",
        env=c.cartpole_env,
        infer_b8=c.cartpole_infer_b8,
        infer_row=c.cartpole_infer_b8 / 32,  # limits: B=256 costs ~2x B=8 (policy benchmark)
        sgd_frame_cpu=c.cartpole_sgd_frame,
        gpu_flop_frame=3 * 4 * 2 * 2 * (4 * 64 + 64 * 64 + 64 * 2),
        obs_bytes=4 * 4 + 32,
        model_bytes=4 * 2 * (4 * 64 + 64 * 64 + 64 * 2 + 2 * 64 + 2),
    )
    nature_flops = 2 * (20 * 20 * 32 * 8 * 8 * 4 + 9 * 9 * 64 * 4 * 4 * 32 + 7 * 7 * 64 * 3 * 3 * 64 + 3136 * 512)
    atari = Workload(
        "Atari-like (Nature CNN, 4x84x84 uint8 obs)",
        env=c.atari_env,
        infer_b8=c.atari_infer_b8,
        infer_row=c.atari_infer_row,
        sgd_frame_cpu=c.atari_sgd_frame,
        gpu_flop_frame=3 * 4 * nature_flops,
        obs_bytes=4 * 84 * 84 + 32,
        model_bytes=4 * 1_690_000,
    )
    return [cartpole, atari]


@dataclass
class Prediction:
    """One predicted operating point."""

    workload: str
    ranks: int
    nodes: int
    trainer: str
    layout: dict[str, int]
    fps: float
    bottleneck: str
    capacities: dict[str, float]
    leader_share: dict[str, float]
    notes: list[str] = field(default_factory=list)


def _allreduce_time(nbytes: float, t: int, c: Constants, across_nodes: bool, gpu: bool) -> float:
    """Rabenseifner allreduce: 2 log2(T) latency terms plus 2 (T-1)/T of the bytes at the algorithm bandwidth.

    CPU trainers: the bandwidth measured here (MPI Allreduce on two ranks: the reduction itself bounds it),
    capped by the fabric across nodes. GPU trainers (NCCL): the fabric across nodes.
    """
    if t <= 1:
        return 0.0
    lat = ASSUMED["net_lat"][0] if across_nodes else 1e-6
    fabric = ASSUMED["net_bw"][0]
    bw = fabric if gpu else (min(fabric, c.allreduce_bw) if across_nodes else c.allreduce_bw)
    return 2 * math.log2(t) * lat + 2 * (t - 1) / t * nbytes / bw


def predict(
    w: Workload,
    c: Constants,
    ranks: int,
    ppn: int = 64,
    trainers: int = 1,
    inference_per_node: int = 0,
    gpu: bool = False,
    per_node_weights: bool = True,
    stats_interval: float | None = None,
    cores: int | None = None,
) -> Prediction:
    """Predict the throughput of one layout.

    Args:
        w: the workload.
        c: measured constants.
        ranks: world size.
        ppn: ranks per node.
        trainers: trainer ranks (on CPU cores, or each driving one GPU when ``gpu``).
        inference_per_node: inference ranks per node (0 = inline inference in every actor).
        gpu: trainers run SGD on GPUs (time from FLOPs at :data:`ASSUMED` peak and utilisation).
        per_node_weights: publications go once per node (else once per subscriber).
        stats_interval: seconds between two statistics reports of each rank to the leader (default: what
            hpcrl uses at this rank count, :func:`hpcrl.runtime.rank.stats_interval`).
        cores: CPU cores actually available to all ranks (None = one per rank); models an oversubscribed
            machine such as a 64-rank job on 2 cores.
    """
    nodes = max(1, math.ceil(ranks / ppn))
    inf = inference_per_node * nodes
    actors = ranks - trainers - inf
    if actors < 1:
        raise ValueError(f"{ranks} ranks cannot hold {trainers} trainers and {inf} inference ranks")
    e = w.envs_per_actor
    # --- actor: env step + (inline inference | half-ring request/reply) + fragment send + weight loads
    if inf:
        act_infer = 2 * c.msg_cpu / (e / 2)  # one request out, one reply in per half of the envs
    else:
        act_infer = w.infer_b8 / e
    frag_send = (c.msg_cpu + w.obs_bytes * w.fragment * e / c.shm_bw) / (w.fragment * e)
    t_actor = w.env + act_infer + frag_send
    actor_cap = actors / t_actor
    # --- inference: batched rollouts over the half-rings of its actors
    if inf:
        rows = (actors / inf) * e / 2
        t_call = w.infer_b8 + max(0.0, rows - 8) * w.infer_row
        per_frame = (t_call + 2 * c.msg_cpu * actors / inf) / rows
        inf_cap = inf / per_frame
    else:
        inf_cap = math.inf
    # --- trainers: SGD, fragment ingestion, allreduces, leader overheads
    trainer_nodes = min(trainers, nodes)
    if gpu:
        peak, util = ASSUMED["gpu_flops"][0], ASSUMED["gpu_util"][0]
        mb_rows = w.frames_per_trainer_step * 4 / w.minibatches_per_step  # rows per minibatch (4 epochs)
        t_mb = max(ASSUMED["gpu_launch"][0], mb_rows * w.gpu_flop_frame / 4 / peak / util)
        sgd = t_mb * w.minibatches_per_step
    else:
        sgd = w.sgd_frame_cpu * w.frames_per_trainer_step
    frag_bytes = w.obs_bytes * w.fragment * e  # one message: every env of an actor, one fragment each
    ingest = (w.frames_per_trainer_step / (w.fragment * e)) * (c.msg_cpu + frag_bytes / c.shm_bw)
    ar = _allreduce_time(w.model_bytes, trainers, c, trainer_nodes > 1, gpu) * w.minibatches_per_step
    subscribers = (inf if inf else actors) if not per_node_weights else nodes
    leader_bytes = subscribers * w.model_bytes
    pub = leader_bytes / min(c.publish_bw, ASSUMED["net_bw"][0] if nodes > 1 else c.publish_bw)
    step = sgd + ingest + ar
    # the leader's publication sends run in the background (Isend) while it computes: they cost step time
    # only where they outlast its SGD (NIC time), and its control work comes out of its CPU time
    pub_extra = max(0.0, pub - sgd)
    if stats_interval is None:
        from hpcrl.runtime.rank import stats_interval as hpcrl_interval

        stats_interval = hpcrl_interval(ranks)
    ctl_per_s = (ranks - 1) / stats_interval  # one stats report per rank per interval
    ctl_share = min(1.0, ctl_per_s * c.ctl_cpu)
    leader_step = (step + pub_extra) / (1.0 - ctl_share) if ctl_share < 1 else math.inf
    trainer_cap = trainers * w.frames_per_trainer_step / leader_step if leader_step < math.inf else 0.0
    parts = {"SGD": sgd, "allreduce": ar, "publication": pub_extra, "control plane": ctl_share * leader_step}
    # every fragment goes to a trainer: the trainer nodes' ingress carries the fragments of the other nodes
    cross = 0.0 if nodes == 1 else (1 - trainer_nodes / nodes)
    net_cap = math.inf if cross == 0 else trainer_nodes * ASSUMED["net_bw"][0] / (w.obs_bytes * cross)
    caps = {"actors": actor_cap, "inference": inf_cap, "trainers": trainer_cap, "network": net_cap}
    notes: list[str] = []
    if cores is not None and cores < ranks:  # oversubscribed machine: every role's CPU time shares ``cores``
        cpu_per_frame = t_actor + (per_frame if inf else 0.0) + leader_step / w.frames_per_trainer_step
        caps["cores"] = cores / cpu_per_frame
        # lower bound: every rank always runnable, so a single-rank role (trainer, inference) gets cores/ranks
        share = cores / ranks
        single = [trainer_cap * share] + ([inf_cap * share] if inf else [])
        notes.append(f"fair-share bound {min(single):,.0f} fps (every rank always runnable)")
    fps = min(caps.values())
    bottleneck = min(caps, key=lambda k: caps[k])
    if bottleneck == "trainers" and leader_step < math.inf:
        bottleneck = f"trainers: {max(parts, key=lambda k: parts[k])}"
    return Prediction(
        workload=w.name,
        ranks=ranks,
        nodes=nodes,
        trainer="GPU" if gpu else "CPU",
        layout={"trainers": trainers, "inference": inf, "actors": actors},
        fps=fps,
        bottleneck=bottleneck,
        capacities=caps,
        notes=[f"{leader_bytes / 1e6:,.1f} MB, {pub * 1e3:.1f} ms", *notes],
        leader_share={
            "sgd": sgd / leader_step if leader_step < math.inf else 0.0,
            "allreduce": ar / leader_step if leader_step < math.inf else 0.0,
            "publication": pub_extra / leader_step if leader_step < math.inf else 0.0,
            "control": ctl_share,
        },
    )


def best_layout(w: Workload, c: Constants, ranks: int, ppn: int, gpu: bool, gpus_per_node: int = 4) -> Prediction:
    """The layout with the highest predicted throughput (trainer count and inference ranks per node)."""
    nodes = max(1, math.ceil(ranks / ppn))
    choices = []
    max_trainers = nodes * gpus_per_node if gpu else ranks // 2
    t = 1
    while t <= max_trainers:
        for ipn in (0, 1, 2, 4, 8):
            try:
                choices.append(predict(w, c, ranks, ppn, t, ipn, gpu=gpu))
            except ValueError:
                continue
        t *= 2
    return max(choices, key=lambda p: p.fps)


# ---------------------------------------------------------------------------------------- constants
def _newest(name: str) -> dict[str, Any] | None:
    files = sorted((RESULTS / name).glob("*.json"))
    return json.loads(files[-1].read_text()) if files else None


def load_constants() -> Constants:
    """Constants from the newest committed benchmark results (defaults where a result is missing)."""
    got: dict[str, Any] = {}
    src: dict[str, str] = {}
    limits = _newest("limits")
    if limits:
        d = limits["data"]
        got["cartpole_env"] = d["env_us"] * 1e-6
        got["cartpole_infer_b8"] = d["infer_us_per_call_b8"] * 1e-6
        got["cartpole_sgd_frame"] = d["sgd_us_per_update_1024"] * 1e-6 / 1024
        src.update(dict.fromkeys(("cartpole_env", "cartpole_infer_b8", "cartpole_sgd_frame"), "limits"))
    channel = _newest("channel")
    if channel:
        d = channel["data"]
        for entry in d.get("cpu_us_per_message") or []:
            if entry.get("bytes") == 1024:
                got["msg_cpu"] = entry["hpcrl_us"] * 1e-6
                src["msg_cpu"] = "channel"
        bws = [r["hpcrl"] for r in channel["rows"] if r["unit"] == "GB/s" and r.get("hpcrl")]
        if bws:
            got["shm_bw"] = max(bws) * 1e9
            src["shm_bw"] = "channel"
    env_step = _newest("env_step")
    if env_step:
        for r in env_step["rows"]:
            if "hpcrl AtariEnvironment" in r["measure"] and r.get("hpcrl"):
                got["atari_env"] = 1.0 / r["hpcrl"]
                src["atari_env"] = "env_step"
    allreduce = _newest("allreduce")
    if allreduce:
        for r in allreduce["rows"]:
            if r["measure"].startswith("gradient allreduce, 10M") and r.get("hpcrl"):
                got["allreduce_bw"] = 40e6 / (r["hpcrl"] * 1e-3)
                src["allreduce_bw"] = "allreduce"
    publish = _newest("publish")
    if publish and publish.get("data", {}).get("leader_bytes_per_s"):
        got["publish_bw"] = float(publish["data"]["leader_bytes_per_s"])
        src["publish_bw"] = "publish"
    own = _newest("scale_model")
    if own:
        for k, v in own["data"].get("measured", {}).items():
            if k in Constants.__dataclass_fields__ and k != "sources":
                got[k] = float(v)
                src[k] = "scale_model --measure"
    src.setdefault("publish_bw", "assumed: one memory copy; the fabric caps it across nodes")
    for k in Constants.__dataclass_fields__:
        if k != "sources":
            src.setdefault(k, "default (not measured here)")
    return Constants(**got, sources=src)


def measure() -> dict[str, float]:
    """Measure what no other benchmark does: Nature CNN inference and SGD on one CPU thread, control messages."""
    import torch

    torch.set_num_threads(1)
    out: dict[str, float] = {}
    net = torch.nn.Sequential(
        torch.nn.Conv2d(4, 32, 8, 4), torch.nn.ReLU(), torch.nn.Conv2d(32, 64, 4, 2), torch.nn.ReLU(),
        torch.nn.Conv2d(64, 64, 3, 1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(3136, 512),
        torch.nn.ReLU(), torch.nn.Linear(512, 7),
    )  # fmt: skip

    def timed(fn: Any, n: int) -> float:
        fn()
        t0 = time.process_time()
        for _ in range(n):
            fn()
        return (time.process_time() - t0) / n

    for b in (8, 64):
        x = torch.rand(b, 4, 84, 84)
        with torch.no_grad():
            out[f"infer_b{b}"] = timed(lambda x=x: net(x), 20)
    out["atari_infer_b8"] = out["infer_b8"]
    out["atari_infer_row"] = (out["infer_b64"] - out["infer_b8"]) / 56
    opt = torch.optim.Adam(net.parameters(), 1e-4)
    x = torch.rand(64, 4, 84, 84)

    def update() -> None:
        opt.zero_grad()
        net(x).pow(2).mean().backward()
        opt.step()

    out["atari_sgd_frame"] = timed(update, 5) / 64 * 4  # 4 epochs per frame
    from mpi4py import MPI

    from hpcrl.comm import control

    comm = MPI.COMM_SELF
    msg = {"type": "stats", "frames": 123456, "episodes": [[21.0, 200]] * 4, "fps": 1234.5}

    def roundtrip() -> None:  # what a stats report costs: post on one side, poll on the other
        control.post_obj(comm, 0, msg)
        got: list[Any] = []
        while not got:
            got = control.poll_obj(comm)

    out["ctl_cpu"] = timed(roundtrip, 500)
    for k in ("infer_b8", "infer_b64"):
        out.pop(k, None)
    return out


# ---------------------------------------------------------------------------------------- output
RANKS = (256, 1024, 4096, 16384)


def _fmt(x: float) -> str:
    if x == math.inf:
        return "-"
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.1f}k" if x >= 1e3 else f"{x:.0f}"


def table(preds: list[Prediction]) -> str:
    """Markdown table of predictions."""
    lines = [
        "| ranks | nodes | trainers | inference | fps | first bottleneck | actors / inference / trainers cap. "
        "| leader time: SGD / allreduce / publ. / control |",
        "|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for p in preds:
        cap = " / ".join(_fmt(p.capacities[k]) for k in ("actors", "inference", "trainers"))
        share = " / ".join(f"{p.leader_share[k]:.0%}" for k in ("sgd", "allreduce", "publication", "control"))
        lines.append(
            f"| {p.ranks:,} | {p.nodes} | {p.layout['trainers']} | {p.layout['inference']} | {_fmt(p.fps)} "
            f"| {p.bottleneck} | {cap} | {share} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the predictions (and optionally re-measure the constants first)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--measure", action="store_true", help="re-measure this machine's constants and save them")
    ap.add_argument("--ppn", type=int, default=64, help="ranks (cores) per node (default 64)")
    ap.add_argument("--json", help="write every prediction to this JSON file")
    args = ap.parse_args(argv)
    if args.measure:
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        res = BenchResult(
            "scale_model", date=started[:10], time=started, command="python -m benchmarks.scale_model --measure"
        )
        res.load_start = load_avg()
        got = measure()
        res.load_end = load_avg()
        res.data["measured"] = got
        listed = ", ".join(f"{k} {v * 1e6:.1f} us" for k, v in got.items())
        res.notes.append(f"constants of the scaling model: {listed}")
        res.machine = machine_info()
        print(f"  measured: {got}\n  saved: {save_result(res)}")
    c = load_constants()
    print("constants (seconds or bytes/s) and their source:")
    for k, v in asdict(c).items():
        if k != "sources":
            print(f"  {k:20s} {v:.3g}  [{c.sources[k]}]")
    print("published figures:")
    for k, (v, unit, s) in ASSUMED.items():
        print(f"  {k:20s} {v:.3g} {unit}  [{s}]")
    everything: list[dict[str, Any]] = []
    for w in workloads(c):
        for gpu in (False, True):
            preds = [best_layout(w, c, r, args.ppn, gpu) for r in RANKS]
            print(f"\n### {w.name}, {'GPU' if gpu else 'CPU'} trainers, {args.ppn} ranks per node (best layout)\n")
            print(table(preds))
            everything += [asdict(p) for p in preds]
        flat = [predict(w, c, r, args.ppn, 1, 0, per_node_weights=False) for r in RANKS]
        node = [predict(w, c, r, args.ppn, 1, 0, per_node_weights=True) for r in RANKS]
        print(f"\n{w.name}: leader bytes and NIC time per publication with inline inference, flat vs per node:")
        for f, n in zip(flat, node):
            shares = f"flat {f.notes[0]} vs per node {n.notes[0]}"
            print(f"  {f.ranks:>6,} ranks: {shares}")
    print("\nthis machine (2 cores), CartPole on one node (measured values: docs/scaling.md):")
    for ranks, ipn, what in (
        (2, 0, "2 ranks: 1 trainer, 1 actor with inline inference"),
        (3, 1, "3 ranks: 1 trainer, 1 inference, 1 actor"),
        (64, 1, "64 ranks: 1 trainer, 1 inference, 62 actors"),
    ):
        p = predict(workloads(c)[0], c, ranks, ppn=64, trainers=1, inference_per_node=ipn, cores=2)
        extra = f"; {p.notes[1]}" if len(p.notes) > 1 else ""
        print(f"  {what}: predicted {p.fps:,.0f} fps, bottleneck {p.bottleneck}{extra}")
        everything.append(asdict(p))
    if args.json:
        Path(args.json).write_text(json.dumps(everything, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
