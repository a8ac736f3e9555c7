"""Cluster deployment: the slurm/ templates, their shared library, and bad launch environments.

Without SLURM (always run): static checks of the templates, ``slurm/hpcrl-slurm.sh`` and
``slurm/gpu-rank.sh`` driven with a fake SLURM environment, and ``hpcrl.run`` given a bad launch
environment (partial SLURM variables, a launcher and an MPI that disagree on the world size, a layout
that does not fit, a run dir that cannot be written): each must fail with a clear error naming the
thing before any training starts.

With SLURM (marker ``slurm``): a real single-node cluster, brought up by ``local-slurm.sh start``
(``HPCRL_LOCAL_SLURM``, else ``../shared/scripts/local-slurm.sh`` beside the checkout; needs root, installs
slurm-wlm + munge with apt if they are missing), runs the templates with sbatch/srun: a complete job
(``sbatch --wait``), ``scancel --signal=TERM`` mid-run then a resubmission that resumes, the time-limit
signal (USR1 to the batch shell) that stops, requeues and resumes, the GPU template's rank wrapper, the
Apptainer template (through a stand-in ``apptainer`` that runs the recipe's %runscript), and launch errors
under srun.
Skipped when sbatch is absent or the cluster cannot be started. Run only these::

    bash ../shared/scripts/local-slurm.sh start      # optional: the fixture starts it too
    .venv/bin/python -m pytest tests/integration/test_slurm.py -m slurm -v
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, mpi_size
from helpers import explain, run_hpcrl

SLURM_DIR = REPO / "slurm"
TEMPLATES = sorted(SLURM_DIR.glob("*.sbatch"))
LIBRARY = SLURM_DIR / "hpcrl-slurm.sh"
GPU_RANK = SLURM_DIR / "gpu-rank.sh"
DEF = REPO / "apptainer" / "hpcrl.def"
_SHARED = Path(__file__).resolve().parents[3] / "shared" / "scripts" / "local-slurm.sh"  # ../shared next to the repo
LOCAL_SLURM = Path(os.environ.get("HPCRL_LOCAL_SLURM", str(_SHARED)))
TINY_JOB = ["actor.envs_per_actor=2", "actor.fragment_length=32", "run.progress=log", "run.log_interval_seconds=1"]
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL"}


# ============================================================== templates (static)
def test_there_are_the_promised_templates():
    names = {p.name for p in TEMPLATES}
    assert names == {"cpu-single-node.sbatch", "cpu-multi-node.sbatch", "gpu-multi-node.sbatch", "apptainer.sbatch"}


@pytest.mark.parametrize("path", [*TEMPLATES, LIBRARY, GPU_RANK], ids=lambda p: p.name)
def test_shell_syntax_and_shellcheck(path):
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    proc = subprocess.run([shellcheck, "-x", "-s", "bash", str(path)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_templates_have_the_deployment_essentials(path):
    text = path.read_text()
    directives = {line.split()[1].split("=")[0] for line in text.splitlines() if line.startswith("#SBATCH ")}
    for needed in ("--signal", "--requeue", "--open-mode", "--time", "--output", "--cpus-per-task"):
        assert needed in directives, f"{path.name} lacks #SBATCH {needed}"
    assert "#SBATCH --signal=B:USR1@120" in text and "#SBATCH --open-mode=append" in text
    assert "hpcrl_launch" in text and "hpcrl_setup" in text
    if path.name == "apptainer.sbatch":
        assert "apptainer run" in text  # the image's %runscript is python -m mpi4py -m hpcrl.run
    else:
        assert '-m mpi4py -m hpcrl.run "${HPCRL_ARGS[@]}"' in text
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    hard = re.findall(r"(?<![\w$}])/(?:home|scratch|work|opt|gpfs|lustre|project|apps)\b\S*", code)
    assert not hard, f"{path.name}: hard-coded cluster paths {hard} (use HPCRL_* variables)"


def test_library_never_sends_sigterm_to_srun():
    """srun turns SIGTERM into SIGKILL of the whole step (measured): the trap must forward USR1."""
    text = LIBRARY.read_text()
    assert 'kill -USR1 "$_HPCRL_SRUN_PID"' in text
    assert not re.search(r"kill (-TERM|-15|-s TERM) .*SRUN", text)
    assert "--kill-on-bad-exit=1" in text


# ============================================================== hpcrl-slurm.sh and gpu-rank.sh without SLURM
def _bash(script: str, env: dict[str, str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", script], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


def _fake_job_env(clean_env: dict[str, str], **extra: str) -> dict[str, str]:
    env = dict(clean_env, SLURM_JOB_ID="4242", SLURM_JOB_NAME="t", SLURM_NTASKS="4", SLURM_JOB_NUM_NODES="1")
    env.update(extra)
    return env


def test_setup_requires_an_absolute_shared_run_root(clean_env, tmp_path):
    env = _fake_job_env(clean_env)
    proc = _bash(f"source {LIBRARY}; hpcrl_setup", env)
    assert proc.returncode == 2 and "HPCRL_RUN_ROOT is not set" in proc.stderr
    proc = _bash(f"source {LIBRARY}; hpcrl_setup", dict(env, HPCRL_RUN_ROOT="relative/runs"))
    assert proc.returncode == 2 and "HPCRL_RUN_ROOT=relative/runs is not an absolute path" in proc.stderr
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = _bash(f"source {LIBRARY}; hpcrl_setup", dict(env, HPCRL_RUN_ROOT=str(blocker)))
    assert proc.returncode == 2 and f"run dir {blocker}/t-4242 cannot be created" in proc.stderr
    proc = _bash(f"source {LIBRARY}; hpcrl_setup", dict(env, HPCRL_RUN_ROOT=str(tmp_path), HPCRL_RUN_NAME="a/b"))
    assert proc.returncode == 2 and "HPCRL_RUN_NAME=a/b must be a plain directory name" in proc.stderr


def test_setup_picks_run_dir_python_and_one_thread(clean_env, tmp_path):
    env = _fake_job_env(clean_env, HPCRL_RUN_ROOT=str(tmp_path), HPCRL_VENV=str(Path(sys.executable).parents[1]))
    env.pop("OMP_NUM_THREADS", None)
    fields = "$RUN_DIR|${HPCRL_PY[*]}|$OMP_NUM_THREADS|$MPIR_CVAR_NO_COLLECTIVE_FINALIZE"
    script = f'source {LIBRARY}; hpcrl_setup; echo "{fields}"'
    proc = _bash(script, env)
    assert proc.returncode == 0, proc.stderr
    run_dir, py, threads, no_coll_finalize = proc.stdout.strip().splitlines()[-1].split("|")
    assert no_coll_finalize == "1"  # the MPICH + srun finalize workaround (slurm/README.md)
    assert run_dir == f"{tmp_path}/t-4242" and Path(run_dir).is_dir()
    assert Path(py).resolve() == Path(sys.executable).parents[1].joinpath("bin", "python").resolve()
    assert threads == "1"
    proc = _bash(f"source {LIBRARY}; hpcrl_setup; hpcrl_run_args no-such.yaml", env)
    assert proc.returncode == 2 and "experiment file no-such.yaml not found" in proc.stderr


def test_srun_mpi_plugin_is_detected_from_the_loaded_mpi(clean_env):
    proc = _bash(f"source {LIBRARY}; hpcrl_srun_mpi {sys.executable}", clean_env)
    assert proc.returncode == 0, proc.stderr
    from mpi4py import MPI

    expected = "pmix" if "Open MPI" in MPI.Get_library_version() else "pmi2"
    assert proc.stdout.strip() == expected
    proc = _bash(f"source {LIBRARY}; hpcrl_srun_mpi {sys.executable}", dict(clean_env, HPCRL_SRUN_MPI="pmix"))
    assert proc.stdout.strip() == "pmix"


@pytest.mark.parametrize(
    ("args", "per_node", "expected"),
    [
        ("exp.yaml", None, "layout.inference_per_node=1"),  # the default: one inference rank per node
        ("exp.yaml layout.trainers=2", "2", "layout.inference_per_node=2"),
        ("exp.yaml layout.inference=6", None, ""),  # the overrides choose: the template adds nothing
        ("exp.yaml layout.inference_per_node=3", None, ""),
        ("exp.yaml", "", ""),  # set but empty: the experiment's layout as it is
    ],
)
def test_multi_node_templates_default_to_one_inference_rank_per_node(clean_env, args, per_node, expected):
    env = dict(clean_env)
    if per_node is not None:
        env["HPCRL_INFERENCE_PER_NODE"] = per_node
    proc = _bash(f'source {LIBRARY}; hpcrl_inference_args {args}; echo "[${{HPCRL_INFERENCE_ARGS[*]}}]"', env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"[{expected}]"
    proc = _bash(f"source {LIBRARY}; hpcrl_inference_args exp.yaml", dict(clean_env, HPCRL_INFERENCE_PER_NODE="one"))
    assert proc.returncode == 2 and "HPCRL_INFERENCE_PER_NODE=one is not a whole number" in proc.stderr
    for name in ("cpu-multi-node.sbatch", "gpu-multi-node.sbatch"):
        text = (SLURM_DIR / name).read_text()
        assert 'hpcrl_inference_args "$@"' in text and '"${HPCRL_INFERENCE_ARGS[@]}"' in text, name


@pytest.mark.parametrize(
    ("procid", "localid", "visible", "expected"),
    [
        ("0", "0", "2,3", "2"),  # trainer 0 -> first GPU SLURM gave this node
        ("1", "1", "2,3", "3"),  # trainer 1 on the same node -> the second
        ("1", "0", "5", "5"),  # cyclic distribution: trainer 1 is task 0 of node 1
        ("2", "2", "2,3", ""),  # not a trainer -> no GPU
    ],
)
def test_gpu_rank_gives_each_trainer_one_gpu(clean_env, procid, localid, visible, expected):
    env = dict(clean_env, HPCRL_TRAINERS="2", SLURM_PROCID=procid, SLURM_LOCALID=localid, CUDA_VISIBLE_DEVICES=visible)
    proc = _bash(f"bash {GPU_RANK} bash -c 'echo \"[$CUDA_VISIBLE_DEVICES]\"'", env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"[{expected}]"


def test_gpu_rank_names_the_shortage(clean_env):
    env = dict(clean_env, HPCRL_TRAINERS="4", SLURM_PROCID="2", SLURM_LOCALID="2", CUDA_VISIBLE_DEVICES="0,1")
    proc = _bash(f"bash {GPU_RANK} true", env)
    assert proc.returncode == 2
    assert "trainer rank 2 is task 2" in proc.stderr and "has 2 GPU(s)" in proc.stderr


# ============================================================== bad launch environments (hpcrl.run)
def _not_started(proc: subprocess.CompletedProcess[str], run_dir: Path) -> None:
    assert "hpcrl.progress" not in proc.stderr and "trainer_steps" not in proc.stdout, explain(proc)
    assert not (run_dir / "checkpoints").exists() or not any((run_dir / "checkpoints").iterdir())


def test_run_dir_under_a_file_is_named(tmp_path, clean_env):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    proc, _, _ = run_hpcrl(clean_env, blocker / "run")
    assert proc.returncode != 0
    assert f"run dir {blocker}/run is not writable" in proc.stderr, explain(proc)
    _not_started(proc, blocker / "run")


def test_read_only_run_dir_is_named(tmp_path, clean_env):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only directories (covered by the 'under a file' case)")
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    proc, _, _ = run_hpcrl(clean_env, ro / "run")
    assert proc.returncode != 0 and f"run dir {ro}/run is not writable" in proc.stderr, explain(proc)


def test_run_dir_error_ends_every_rank_with_one_line(tmp_path, clean_env):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    proc, _, _ = run_hpcrl(clean_env, blocker / "run", "layout.inference=1", ranks=3)
    assert proc.returncode == 2, explain(proc)
    line = f"hpcrl: run dir {blocker}/run is not writable"
    assert proc.stderr.count(line) == 1 and "Traceback" not in proc.stderr, explain(proc)  # printed by rank 0 only
    _not_started(proc, blocker / "run")


def test_world_size_that_does_not_fit_the_layout(tmp_path, clean_env):
    run_dir = tmp_path / "layout"
    proc, _, _ = run_hpcrl(clean_env, run_dir, "layout.trainers=2", "layout.inference=2", ranks=3)
    assert proc.returncode != 0
    assert "trainers=2 inference=2" in proc.stderr and "the world size is 3" in proc.stderr, explain(proc)
    assert not run_dir.exists()


def test_slurm_procid_without_ntasks_is_one_process(tmp_path, clean_env):
    """SLURM_PROCID=0 without SLURM_NTASKS is what the batch shell of a job submitted without --ntasks
    sees (measured with slurm 22.05): ``python -m hpcrl.run`` there is a legitimate one-process run."""
    run_dir = tmp_path / "batch-shell"
    proc, summary, _ = run_hpcrl(dict(clean_env, SLURM_PROCID="0", SLURM_JOB_ID="7"), run_dir)
    assert proc.returncode == 0, explain(proc)
    assert "local run" in proc.stderr and summary is not None and summary["frames"] >= 3000


@pytest.mark.parametrize(
    "launcher_env",
    [
        # srun --mpi=none, or hpcrl started in the batch script without srun: no PMI for the MPI library
        {"SLURM_PROCID": "0", "SLURM_NTASKS": "4"},
        # Open MPI's mpirun starting a python whose mpi4py loads the mpich wheel: every rank a singleton
        {"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "0"},
    ],
    ids=["slurm-without-pmi", "openmpi-launcher-mpich-library"],
)
def test_launcher_and_mpi_disagree_on_the_world_size(tmp_path, clean_env, launcher_env):
    """N singletons would each train alone on the same run dir: refuse, naming the variable."""
    run_dir = tmp_path / "singletons"
    proc, _, _ = run_hpcrl(dict(clean_env, **launcher_env), run_dir)
    var = next(k for k in launcher_env if k.endswith(("SIZE", "NTASKS")))
    assert proc.returncode == 2, explain(proc)
    assert f"{var}=4" in proc.stderr and "1 rank" in proc.stderr, explain(proc)
    _not_started(proc, run_dir)
    assert not run_dir.exists()


# ============================================================== a real single-node SLURM
def _sinfo_up() -> bool:
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and any(s in proc.stdout for s in ("idle", "mix", "alloc"))


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running single-node SLURM; started (and stopped afterwards) with local-slurm.sh when needed."""
    if mpi_size() > 1:
        pytest.skip("drives its own SLURM jobs: runs in the serial pass only")
    if shutil.which("sbatch") is None:
        pytest.skip("sbatch is not installed (bash local-slurm.sh start installs slurm-wlm + munge)")
    started = False
    if not _sinfo_up():
        if os.geteuid() != 0 or not LOCAL_SLURM.exists():
            pytest.skip(f"no running SLURM, and {LOCAL_SLURM} cannot be run here (needs root)")
        proc = subprocess.run(["bash", str(LOCAL_SLURM), "start"], capture_output=True, text=True, timeout=300)
        if proc.returncode != 0 or not _sinfo_up():
            pytest.skip(f"the local SLURM did not start: {proc.stdout[-500:]} {proc.stderr[-1000:]}")
        started = True
    yield
    if started:
        subprocess.run(["bash", str(LOCAL_SLURM), "stop"], capture_output=True, timeout=60)


class SlurmJobs:
    """Submit slurm/ templates with a 4-task, 5-minute allocation and follow the jobs."""

    def __init__(self, clean_env: dict[str, str], root: Path) -> None:
        self.root = root
        self.env = dict(clean_env, HPCRL_RUN_ROOT=str(root), HPCRL_PYTHON=sys.executable)

    def submit(
        self,
        template: str,
        name: str,
        *args: str,
        sbatch: tuple[str, ...] = (),
        config: str = "examples/cartpole/ppo.yaml",
        **env: str,
    ):
        """sbatch the template (no waiting unless ``sbatch`` has --wait); returns (job id, sbatch process)."""
        cmd = ["sbatch", "--parsable", "--ntasks=4", "--time=00:05:00", f"--output={self.out(name)}", *sbatch]
        cmd += [str(SLURM_DIR / template), config, *TINY_JOB, *args]
        proc = subprocess.run(
            cmd, env=dict(self.env, HPCRL_RUN_NAME=name, **env), cwd=REPO, capture_output=True, text=True, timeout=300
        )
        m = re.search(r"^(\d+)", proc.stdout.strip())
        assert m, f"sbatch failed: {proc.stdout} {proc.stderr}"
        return int(m.group(1)), proc

    def run(self, template: str, name: str, *args: str, timeout: float = 120, **kw: Any) -> tuple[int, dict[str, str]]:
        """Submit and poll until the job ends (faster than sbatch --wait's 2/8/32 s polling)."""
        job, _ = self.submit(template, name, *args, **kw)
        return job, self.wait(job, timeout)

    def out(self, name: str) -> Path:
        return self.root / f"{name}.out"

    def text(self, name: str) -> str:
        return self.out(name).read_text() if self.out(name).exists() else ""

    def run_dir(self, name: str) -> Path:
        return self.root / name

    @staticmethod
    def state(job: int) -> dict[str, str]:
        proc = subprocess.run(["scontrol", "show", "job", "-o", str(job)], capture_output=True, text=True, timeout=20)
        return dict(kv.split("=", 1) for kv in proc.stdout.split() if "=" in kv)

    def wait(self, job: int, timeout: float, until: set[str] = FINAL_STATES) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.state(job)
            if st.get("JobState") in until:
                return st
            time.sleep(0.5)
        subprocess.run(["scancel", str(job)], timeout=20)
        pytest.fail(f"job {job} not in {sorted(until)} after {timeout:.0f} s: {self.state(job)}")

    def wait_for_training(self, name: str, job: int, min_steps: int = 2, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            steps = [int(s) for s in re.findall(r"hpcrl\.progress: frames .* steps (\d+)", self.text(name))]
            if steps and max(steps) >= min_steps:
                return
            if self.state(job).get("JobState") in FINAL_STATES:
                pytest.fail(f"job {job} ended before training:\n{self.text(name)[-4000:]}")
            time.sleep(0.3)
        subprocess.run(["scancel", str(job)], timeout=20)
        pytest.fail(f"job {job}: no trainer step within {timeout:.0f} s:\n{self.text(name)[-4000:]}")

    def summary(self, name: str, job: int) -> dict[str, Any]:
        path = self.run_dir(name) / f"summary-{job}.json"
        assert path.exists(), self.text(name)[-4000:]
        return json.loads(path.read_text())


@pytest.fixture
def jobs(slurm_cluster, clean_env, tmp_path) -> SlurmJobs:
    return SlurmJobs(clean_env, tmp_path)


def _checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]]:
    from hpcrl.storage.checkpoint import read_checkpoint_attrs

    ckpts = sorted((run_dir / "checkpoints").glob("ckpt-*.h5"))
    assert ckpts, f"no checkpoint in {run_dir}"
    return ckpts[-1], read_checkpoint_attrs(ckpts[-1])


@pytest.mark.slurm
def test_sbatch_wait_single_node_template(jobs):
    job, proc = jobs.submit(
        "cpu-single-node.sbatch", "done", "layout.inference=1", "experiment.total_frames=3000", sbatch=("--wait",)
    )
    text = jobs.text("done")
    assert proc.returncode == 0, text[-4000:]
    assert "srun --mpi=pmi2 --kill-on-bad-exit=1" in text  # detected from the mpich wheel
    summary = jobs.summary("done", job)
    assert summary["world_size"] == 4 and summary["reason"] == "total_frames reached"
    assert "1 inference [1], 2 actors [2-3]" in summary["layout"]
    assert summary["frames"] >= 3000 and summary["trainer_steps"] >= 1
    assert _checkpoint(jobs.run_dir("done"))[1]["reason"] == "final"
    assert jobs.state(job)["JobState"] == "COMPLETED"


@pytest.mark.slurm
def test_scancel_term_checkpoints_and_a_resubmission_resumes(jobs):
    job, _ = jobs.submit("cpu-single-node.sbatch", "pre", "layout.inference=1", "experiment.total_frames=10000000")
    jobs.wait_for_training("pre", job)
    subprocess.run(["scancel", "--signal=TERM", str(job)], check=True, timeout=20)
    t0 = time.monotonic()
    st = jobs.wait(job, timeout=60)
    assert time.monotonic() - t0 < 30, "the stop must beat SLURM's KillWait (30 s)"
    assert st["JobState"] == "COMPLETED" and st["ExitCode"] == "0:0", (st, jobs.text("pre")[-4000:])
    before = jobs.summary("pre", job)
    assert before["reason"].startswith("SIGTERM")
    path, attrs = _checkpoint(jobs.run_dir("pre"))
    assert attrs["reason"] == "stop" and attrs["frames"] == before["frames"] and str(path) == before["checkpoint"]

    target = before["frames"] + 2000
    job2, _ = jobs.submit("cpu-single-node.sbatch", "pre", "layout.inference=1", f"experiment.total_frames={target}")
    st = jobs.wait(job2, timeout=120)
    assert st["JobState"] == "COMPLETED", jobs.text("pre")[-4000:]
    assert f"resumed from {path}: version {before['policy_version']}" in jobs.text("pre")
    after = jobs.summary("pre", job2)
    assert after["frames"] >= target and after["frames_this_run"] < after["frames"]
    assert after["policy_version"] > before["policy_version"]


@pytest.mark.slurm
def test_time_limit_signal_stops_requeues_and_resumes(jobs, tmp_path):
    """What ``--signal=B:USR1@120`` does near the time limit, sent now: USR1 to the batch shell.

    The requeued job runs the same command line, so the frame budget lives in a config file that the test
    rewrites between the two legs: the first leg cannot reach its budget before the signal (a fixed small
    budget raced the signal on a fast machine), the second has 2,000 frames left after resuming.
    """
    import yaml

    cfg = yaml.safe_load((REPO / "examples/cartpole/ppo.yaml").read_text())
    cfg["experiment"]["total_frames"] = 10_000_000
    cfg_path = tmp_path / "rq.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    job, _ = jobs.submit("cpu-single-node.sbatch", "rq", "layout.inference=1", config=str(cfg_path))
    jobs.wait_for_training("rq", job)
    subprocess.run(["scancel", "--batch", "--signal=USR1", str(job)], check=True, timeout=20)
    st = jobs.wait(job, timeout=60, until={"PENDING", *FINAL_STATES})
    assert st["JobState"] == "PENDING" and st["Restarts"] == "1", (st, jobs.text("rq")[-4000:])
    first = jobs.summary("rq", job)
    assert first["reason"] == "SIGUSR1" and first["frames"] < 10_000_000
    target = first["frames"] + 2000
    cfg["experiment"]["total_frames"] = target
    cfg_path.write_text(yaml.safe_dump(cfg))
    # SLURM holds a requeued job ~2 min (BeginTime); release it now, but not within the second of the
    # requeue: slurmd refuses a credential created in the same second as the revocation ("Job credential
    # revoked", seen here), and the job then FAILS instead of running again
    time.sleep(2.5)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, timeout=20)
    st = jobs.wait(job, timeout=120)
    text = jobs.text("rq")
    assert st["JobState"] == "COMPLETED" and st["ExitCode"] == "0:0", (st, text[-4000:])
    assert "batch shell got SIGUSR1" in text and f"requeueing job {job} (restart 1)" in text
    assert f"job {job} (restart 1)" in text and f"resumed from {first['checkpoint']}" in text
    final = jobs.summary("rq", job)  # the requeued run rewrote it
    assert final["reason"] == "total_frames reached" and final["frames"] >= target
    assert final["frames_this_run"] < final["frames"] and final["policy_version"] > first["policy_version"]
    assert _checkpoint(jobs.run_dir("rq"))[1]["reason"] == "final"


@pytest.mark.slurm
def test_gpu_template_layout_and_rank_wrapper(jobs):
    """The GPU template on this CPU node: two (fake) GPU ids, two trainer ranks, gradients allreduced."""
    job, st = jobs.run(
        "gpu-multi-node.sbatch",
        "gpu",
        "experiment.total_frames=3000",
        "layout.inference=0",  # 4 tasks: 2 trainers need 2 actors, no room for the default inference rank
        "training.device=cpu",  # no CUDA here; test_gpu_rank_gives_each_trainer_one_gpu checks the pick
        sbatch=("--nodes=1", "--ntasks-per-node=4", "--gpus-per-node=0"),
        HPCRL_TRAINERS="2",
        CUDA_VISIBLE_DEVICES="6,7",
    )
    text = jobs.text("gpu")
    assert st["JobState"] == "COMPLETED", text[-4000:]
    assert "gpu-rank.sh" in text
    summary = jobs.summary("gpu", job)
    assert summary["world_size"] == 4 and "2 trainers [0-1]" in summary["layout"]
    assert "rank 1 trainer: trainer_steps=" in text


@pytest.mark.slurm
def test_multi_node_template_puts_an_inference_rank_on_the_node(jobs):
    """cpu-multi-node.sbatch on this one node, without layout overrides: one inference rank per node."""
    job, st = jobs.run(
        "cpu-multi-node.sbatch", "multi", "experiment.total_frames=3000", sbatch=("--nodes=1", "--ntasks-per-node=4")
    )
    text = jobs.text("multi")
    assert st["JobState"] == "COMPLETED", text[-4000:]
    assert "layout.inference_per_node=1" in text  # the srun line the library logs
    summary = jobs.summary("multi", job)
    assert summary["world_size"] == 4 and "1 inference [1], 2 actors [2-3]" in summary["layout"], summary
    assert summary["cross_node_requests"] == 0 and summary["inference_requests"] > 0


@pytest.mark.slurm
def test_apptainer_template_with_a_stand_in_apptainer(jobs, tmp_path):
    """apptainer.sbatch end to end, with ``apptainer`` replaced by a script that runs the recipe's
    %runscript on the host (no Apptainer here): checks the template's plumbing, not the image."""
    runscript = re.search(r"^%runscript\n((?:[ \t]+.*\n)+)", DEF.read_text(), re.M)
    assert runscript
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "runscript.sh").write_text("#!/bin/bash\n" + runscript.group(1))
    log = tmp_path / "apptainer-calls.log"
    shim = bindir / "apptainer"
    shim.write_text(
        f"""#!/bin/bash
# stand-in for apptainer: exec|run [options] IMAGE args...
echo "$*" >> {log}
verb=$1; shift
while [ $# -gt 0 ]; do case $1 in --nv|--cleanenv) shift;; --bind|-B|--env) shift 2;; *) break;; esac; done
[ -f "$1" ] || {{ echo "stand-in apptainer: no image $1" >&2; exit 255; }}
shift
export PATH={Path(sys.executable).parent}:$PATH  # the image's python
case $verb in
exec) exec "$@";;
run) exec bash {bindir}/runscript.sh "$@";;
esac
"""
    )
    shim.chmod(0o755)
    sif = tmp_path / "hpcrl.sif"
    sif.write_text("not an image")
    job, st = jobs.run(
        "apptainer.sbatch",
        "sif",
        "layout.inference=1",
        "experiment.total_frames=3000",
        HPCRL_SIF=str(sif),
        HPCRL_APPTAINER_ARGS="--nv",
        PATH=f"{bindir}:{os.environ['PATH']}",
    )
    text = jobs.text("sif")
    assert st["JobState"] == "COMPLETED", text[-4000:]
    assert jobs.summary("sif", job)["world_size"] == 4
    calls = log.read_text().splitlines()
    run_calls = [c for c in calls if c.startswith("run ")]
    assert len(run_calls) == 4  # one container per rank
    assert all(c.startswith(f"run --nv --bind {jobs.root} {sif} examples/cartpole/ppo.yaml") for c in run_calls)
    assert any(c.startswith(f"exec --nv --bind {jobs.root} {sif} python -c") for c in calls)  # MPI detection


@pytest.mark.slurm
def test_srun_without_pmi_is_refused(jobs):
    """``srun --mpi=none``: every task an MPI singleton. Must fail, not train 4 times on one run dir."""
    _, st = jobs.run("cpu-single-node.sbatch", "nopmi", "experiment.total_frames=500", HPCRL_SRUN_MPI="none")
    text = jobs.text("nopmi")
    assert st["JobState"] == "FAILED", text[-4000:]
    assert "SLURM_NTASKS=4" in text and "1 rank" in text, text[-4000:]
    assert not (jobs.run_dir("nopmi") / "checkpoints").exists() or not any(
        (jobs.run_dir("nopmi") / "checkpoints").iterdir()
    )


@pytest.mark.slurm
def test_layout_that_does_not_fit_the_allocation(jobs):
    _, st = jobs.run("cpu-single-node.sbatch", "badlayout", "layout.trainers=2", "layout.inference=2")
    text = jobs.text("badlayout")
    assert st["JobState"] == "FAILED"
    assert "trainers=2 inference=2" in text and "the world size is 4" in text, text[-4000:]
