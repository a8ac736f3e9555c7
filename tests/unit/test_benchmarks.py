"""The benchmark suite's bookkeeping: one result format, a page rebuilt from committed files alone, every script
in the suite, and docs whose commands and paths exist. No benchmark is run here (they are slow and need a
quiet machine); the result files and the page are checked as committed.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
from pathlib import Path

import pytest
from conftest import REPO

from benchmarks import report
from benchmarks.common import RESULTS, BenchResult, Context, ResultError, Row, load_results, run_benchmark, save_result
from benchmarks.run import BENCHMARKS

DOCS = [
    REPO / "README.md",
    *sorted((REPO / "docs").glob("*.md")),
    REPO / "slurm" / "README.md",
    REPO / "apptainer" / "README.md",
    REPO / "benchmarks" / "analysis.md",
    *sorted((REPO / "examples").glob("*/README.md")),
]


def _result(name: str = "trace", when: str = "2026-01-02T03:04:05+0000", shared: bool = False) -> BenchResult:
    res = BenchResult(name)
    res.rows.append(Row(name, "a measure", 90.0, "a peer", 100.0, "fps", target=0.98, target_text="<= 2%").finish())
    res.date, res.time, res.command = when[:10], when, f"python -m benchmarks.run --only {name}"
    res.machine = {"host_kind": "2cpu", "cpus": 2, "shared": shared}
    res.load_start = res.load_end = (1.5, 1.0, 1.0)
    return res


def test_committed_page_is_what_the_committed_results_give():
    assert report.PAGE.read_text() == report.expected_page(), "regenerate: python -m benchmarks.report"


def test_committed_results_are_full_runs_named_by_their_date_and_machine():
    files = sorted(RESULTS.glob("*/*.json"))
    assert files, "no committed result files under benchmarks/results/"
    for path in files:
        # scale_model holds the scaling model's measured constants (python -m benchmarks.scale_model --measure)
        assert path.parent.name in {*BENCHMARKS, "scale_model"}, f"{path}: not a benchmark of the suite"
        res = BenchResult.from_dict(json.loads(path.read_text()), str(path))
        assert not res.quick, f"{path}: a --quick result is never committed"
        assert path.name == f"{res.date}-{res.machine['host_kind']}.json", path
        assert res.command.startswith("python -m benchmarks."), res.command


def test_every_benchmark_script_is_in_the_suite_and_has_a_command_line(capsys):
    scripts = {p.stem.removeprefix("bench_") for p in (REPO / "benchmarks").glob("bench_*.py")}
    assert scripts == set(BENCHMARKS), (
        f"not in the suite: {scripts - set(BENCHMARKS)}; no script: {set(BENCHMARKS) - scripts}"
    )
    for name in BENCHMARKS:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        assert callable(module.run)
        with pytest.raises(SystemExit) as e:
            module.main(["--help"])
        assert e.value.code == 0
        assert f"python -m benchmarks.bench_{name}" in capsys.readouterr().out


def test_a_saved_result_is_loaded_back_and_the_newest_wins(tmp_path):
    old, new = _result(when="2026-01-02T03:04:05+0000"), _result(when="2026-02-01T00:00:00+0000")
    new.rows[0].hpcrl = 99.0
    p_old, p_new = save_result(old, tmp_path), save_result(new, tmp_path)
    assert (p_old.name, p_new.name) == ("2026-01-02-2cpu.json", "2026-02-01-2cpu.json")
    (loaded,) = load_results(["trace", "channel"], tmp_path)
    assert loaded.rows[0].hpcrl == 99.0 and loaded.date == "2026-02-01"
    assert loaded.rows[0].as_dict() == new.rows[0].as_dict()


def test_a_bad_result_file_is_refused_naming_the_file_and_the_field(tmp_path):
    path = save_result(_result(), tmp_path)
    d = json.loads(path.read_text())
    d["rows"][0]["speedup"] = 2.0
    path.write_text(json.dumps(d))
    with pytest.raises(ResultError, match=r"2026-01-02-2cpu\.json: rows\[0\] has unknown field\(s\) \['speedup'\]"):
        load_results(["trace"], tmp_path)
    path.write_text("{not json")
    with pytest.raises(ResultError, match=r"2026-01-02-2cpu\.json: not readable as JSON"):
        load_results(["trace"], tmp_path)
    path.write_text(json.dumps({**_result("channel").as_dict()}))
    with pytest.raises(ResultError, match="holds benchmark 'channel', expected 'trace'"):
        load_results(["trace"], tmp_path)


def test_the_page_dates_every_row_marks_shared_machines_and_lists_missing_benchmarks():
    page = report.render_markdown([_result("trace", shared=True)])
    row = next(line for line in page.splitlines() if line.startswith("| trace | a measure |"))
    assert "2026-01-02, 2cpu, load 1.50, **shared**" in row
    assert "**FAIL**" in row and "0.90x" in row
    missing = page.split("## Not measured yet", 1)[1].split("##", 1)[0]
    for name in BENCHMARKS:
        assert (f"`python -m benchmarks.run --only {name}`" in missing) == (name != "trace"), name
    assert "python -m benchmarks.run --only trace" in page.split("## Sources", 1)[1]


def test_a_benchmark_that_raises_is_kept_as_a_result_with_the_error():
    def broken(ctx: Context) -> BenchResult:
        raise RuntimeError("no MPI here")

    res = run_benchmark("channel", broken, Context(), "python -m benchmarks.run --only channel")
    assert res.rows == [] and res.notes == ["benchmark raised RuntimeError: no MPI here"]
    assert res.name == "channel" and res.date and res.machine["host_kind"]


_MODULE_RE = re.compile(r"python3? -m ((?:hpcrl|benchmarks)[\w.]*)")
_SCRIPT_RE = re.compile(r"python3? (benchmarks/[\w/]+\.py)")
_PATH_RE = re.compile(r"`((?:hpcrl|tests|benchmarks|examples|slurm|apptainer|docs)/[\w./-]+?)(?:::[\w\[\]-]+)?`")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_docs_name_modules_and_files_that_exist(doc: Path):
    text = doc.read_text()
    for module in sorted(set(_MODULE_RE.findall(text))):
        assert importlib.util.find_spec(module) is not None, f"{doc.name}: `python -m {module}` does not exist"
    for script in sorted(set(_SCRIPT_RE.findall(text))):
        module = script.removesuffix(".py").replace("/", ".")
        pytest.fail(f"{doc.name}: `python {script}` cannot import the benchmarks package; say `python -m {module}`")
    for rel in sorted(set(_PATH_RE.findall(text))):
        placeholder = {"NAME", "DATE", "KIND"} & set(re.split(r"[/._-]", rel))
        if (
            placeholder
            or any(c in rel for c in "*<>")
            or rel.startswith(("benchmarks/.peers", "benchmarks/results/quick"))
        ):
            continue  # a pattern, or a folder made on first use
        assert (REPO / rel).exists(), f"{doc.name} names {rel}, which is not in the repository"


def test_the_scaling_model_counts_leader_bytes_per_node_and_per_subscriber():
    from benchmarks import scale_model as sm

    c = sm.load_constants()
    cartpole, atari = sm.workloads(c)
    for w in (cartpole, atari):
        flat = sm.predict(w, c, 1024, ppn=64, per_node_weights=False)  # 1 trainer, 1023 inline actors
        node = sm.predict(w, c, 1024, ppn=64, per_node_weights=True)
        assert flat.nodes == node.nodes == 16
        assert flat.notes[0].startswith(f"{1023 * w.model_bytes / 1e6:,.1f} MB")
        assert node.notes[0].startswith(f"{16 * w.model_bytes / 1e6:,.1f} MB")
        assert node.fps / flat.fps >= 1.0  # a pure function of the constants: no timing here
        # more ranks never predict less throughput for the best layout, up to where the model saturates
        fps = [sm.best_layout(w, c, r, 64, gpu=False).fps for r in (256, 1024)]
        assert fps[1] > fps[0]
    with pytest.raises(ValueError, match="cannot hold"):
        sm.predict(cartpole, c, 4, ppn=64, trainers=2, inference_per_node=2)


def test_the_scaling_model_prints_its_tables(capsys):
    from benchmarks import scale_model as sm

    assert sm.main([]) == 0
    out = capsys.readouterr().out
    for ranks in ("256", "1,024", "4,096", "16,384"):
        assert f"| {ranks} |" in out
    assert "GPU trainers" in out and "Atari-like" in out


def test_the_scaling_benchmark_config_resolves_and_builds_its_policy():
    """The scaling job's inline config (its own policy class, the sleep env) passes the run's start-up checks."""
    from benchmarks.bench_scaling import SLEEP_YAML, BenchRandomPolicy
    from hpcrl.api import config
    from hpcrl.runtime import components

    cfg = config.from_dict(config.parse_yaml(SLEEP_YAML % {"step": 0.001}, "sleep.yaml"))
    components.import_user_modules(cfg)
    cfg, agents = components.resolve_experiment(cfg)
    assert agents == 1 and cfg.single_policy.args == {"action_dim": 2, "continuous_action": False}
    policy = components.build_policy(cfg.single_policy, "cpu", seed=1)
    assert isinstance(policy, BenchRandomPolicy) and set(policy.state_dict()) == {"w"}
