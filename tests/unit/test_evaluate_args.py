"""``python -m hpcrl.evaluate`` refuses episode and env counts below 1 before loading anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hpcrl.evaluate import evaluate


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--episodes", "0"], "argument --episodes: must be >= 1, got 0"),
        (["--episodes", "-3"], "argument --episodes: must be >= 1, got -3"),
        (["--episodes", "many"], "argument --episodes: expected an integer >= 1, got 'many'"),
        (["--envs", "0"], "argument --envs: must be >= 1, got 0"),
    ],
    ids=["episodes-0", "episodes-negative", "episodes-text", "envs-0"],
)
def test_counts_below_one_are_usage_errors(
    tmp_path: Path, clean_env: dict[str, str], args: list[str], expected: str
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hpcrl.evaluate", str(tmp_path), *args],
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == "" and "nan" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"python -m hpcrl.evaluate: error: {expected}"


def test_evaluate_function_refuses_zero_episodes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^evaluate: episodes must be >= 1, got 0$"):
        evaluate(tmp_path, episodes=0)
