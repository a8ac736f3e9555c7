"""A checkpoint's stored config never chooses code to import or call unless the user says so.

Each test copies a real checkpoint, rewrites its ``config`` root attribute with h5py (attributes
carry no checksum, so anyone who can write the file can do this) and checks that
``load_policy``, ``evaluate`` and ``python -m hpcrl.evaluate`` refuse before anything the file
names runs (a marker file the payload would create stays absent), while the legitimate ways
(built-ins, a policy the caller registered, ``--config``, ``--trust-checkpoint-config``) work.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import yaml
from conftest import REPO

import hpcrl
from hpcrl.api import config
from hpcrl.api.policy import ALL_POLICIES
from hpcrl.api.policy import register as register_policy
from hpcrl.evaluate import evaluate
from hpcrl.roles.local import run_local
from hpcrl.storage.checkpoint import CheckpointError, find_checkpoint
from hpcrl.storage.stored_config import UntrustedConfigError


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkpoint file of a tiny one-process CartPole run."""
    run = tmp_path_factory.mktemp("trust") / "run"
    cfg = config.load(
        REPO / "examples/cartpole/ppo.yaml",
        [f"run.dir={run}", "experiment.total_frames=600", "actor.envs_per_actor=2", "actor.fragment_length=32"]
        + ["run.progress=off", "trainer.args.epochs=1", "trainer.args.minibatches=1"],
    )
    run_local(cfg)
    file, _, _ = find_checkpoint(run)
    return file


def tamper(src: Path, dst_dir: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """Copy checkpoint ``src`` into ``dst_dir`` and rewrite its stored config with ``edit`` (in place on a dict)."""
    dst = dst_dir / src.name
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        data = yaml.safe_load(bytes(f.attrs["config"]).decode())
        edit(data)
        f.attrs["config"] = np.bytes_(yaml.safe_dump(data).encode())
    return dst


def popen_policy(marker: Path) -> Callable[[dict[str, Any]], None]:
    def edit(d: dict[str, Any]) -> None:
        d["policy"] = {"type_": "subprocess:Popen", "args": {"args": ["touch", str(marker)]}}

    return edit


def system_env(marker: Path) -> Callable[[dict[str, Any]], None]:
    def edit(d: dict[str, Any]) -> None:
        d["environment"] = {"type_": "os:system", "args": {"command": f"touch {marker}"}}

    return edit


def evil_import(module: str) -> Callable[[dict[str, Any]], None]:
    def edit(d: dict[str, Any]) -> None:
        d["experiment"]["imports"] = [module]

    return edit


def gym_id_import(module: str) -> Callable[[dict[str, Any]], None]:
    def edit(d: dict[str, Any]) -> None:
        d["environment"]["args"]["id"] = f"{module}:CartPole-v1"  # gymnasium imports the module part

    return edit


def write_module(directory: Path, name: str, body: str) -> None:
    (directory / f"{name}.py").write_text(textwrap.dedent(body))


def evil_module(tmp_path: Path, name: str) -> Path:
    """A module in ``tmp_path`` that creates a marker file when imported; returns the marker."""
    marker = tmp_path / f"{name}.ran"
    write_module(tmp_path, name, f"open({str(marker)!r}, 'w').close()\n")
    return marker


def run_evaluate(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hpcrl.evaluate", *args, "--episodes", "2", "--envs", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


# ====================================================================== refusals
def test_load_policy_refuses_a_stored_popen_policy(trained: Path, tmp_path: Path) -> None:
    marker = tmp_path / "popen.ran"
    ckpt = tamper(trained, tmp_path, popen_policy(marker))
    with pytest.raises(UntrustedConfigError) as info:
        hpcrl.load_policy(str(ckpt))
    msg = str(info.value)
    assert str(ckpt) in msg and "policy.type_ 'subprocess:Popen'" in msg
    assert "config=" in msg and "trust_config=True" in msg
    assert isinstance(info.value, CheckpointError)
    assert not marker.exists()


def test_evaluate_refuses_stored_imports_without_importing(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "hpcrl_trust_evil_import"
    marker = evil_module(tmp_path, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    ckpt = tamper(trained, tmp_path, evil_import(name))
    with pytest.raises(UntrustedConfigError, match=rf"experiment\.imports\[0\] '{name}'"):
        evaluate(ckpt, episodes=1, envs=1)
    assert not marker.exists() and name not in sys.modules


def test_evaluate_refuses_a_stored_os_system_env(trained: Path, tmp_path: Path) -> None:
    marker = tmp_path / "system.ran"
    ckpt = tamper(trained, tmp_path, system_env(marker))
    with pytest.raises(UntrustedConfigError, match=r"environment\.type_ 'os:system'"):
        evaluate(ckpt, episodes=1, envs=1)
    assert not marker.exists()


def test_evaluate_refuses_a_module_named_in_builtin_env_args(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "hpcrl_trust_evil_gym_id"
    marker = evil_module(tmp_path, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    ckpt = tamper(trained, tmp_path, gym_id_import(name))
    with pytest.raises(UntrustedConfigError, match=rf"environment\.args\.id '{name}:CartPole-v1'"):
        evaluate(ckpt, episodes=1, envs=1)
    assert not marker.exists() and name not in sys.modules


@pytest.mark.parametrize("payload", ["popen", "imports", "system"])
def test_evaluate_cli_refuses_with_one_line_and_exit_2(
    trained: Path, tmp_path: Path, clean_env: dict[str, str], payload: str
) -> None:
    name = "hpcrl_trust_evil_cli"
    marker = evil_module(tmp_path, name) if payload == "imports" else tmp_path / f"{payload}.ran"
    edit = {"popen": popen_policy(marker), "imports": evil_import(name), "system": system_env(marker)}[payload]
    entry = {
        "popen": "policy.type_ 'subprocess:Popen'",
        "imports": f"experiment.imports[0] '{name}'",
        "system": "environment.type_ 'os:system'",
    }[payload]
    ckpt = tamper(trained, tmp_path, edit)
    env = dict(clean_env, PYTHONPATH=f"{tmp_path}:{clean_env['PYTHONPATH']}")
    proc = run_evaluate(env, str(ckpt))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"hpcrl.evaluate: {ckpt}: ") and entry in lines[0]
    assert "--config EXP.yaml" in lines[0] and "--trust-checkpoint-config" in lines[0]
    assert not marker.exists()


# ====================================================================== the legitimate ways
def _user_policy(**kwargs: Any) -> Any:
    """A user's policy factory (the built-in actor-critic under another name)."""
    from hpcrl.policies.actor_critic import make_separate

    return make_separate(**kwargs)


def test_builtin_policy_loads_and_evaluates(trained: Path) -> None:
    policy = hpcrl.load_policy(str(trained))
    out = evaluate(trained, episodes=1, envs=1)
    assert out["version"] == policy.version


@pytest.mark.parametrize("stored_name", ["hpcrl-trust-user-policy", f"{__name__}:_user_policy"])
def test_a_policy_the_caller_registered_loads(trained: Path, tmp_path: Path, stored_name: str) -> None:
    def edit(d: dict[str, Any]) -> None:
        d["policy"]["type_"] = stored_name

    ckpt = tamper(trained, tmp_path, edit)
    with pytest.raises(UntrustedConfigError, match=f"policy.type_ '{stored_name}'"):
        hpcrl.load_policy(str(ckpt))
    register_policy("hpcrl-trust-user-policy", _user_policy)
    try:
        policy = hpcrl.load_policy(str(ckpt))
        assert policy.version == hpcrl.load_policy(str(trained)).version
    finally:
        for key in ("hpcrl-trust-user-policy", f"{__name__}:_user_policy"):
            ALL_POLICIES._entries.pop(key, None)


def test_own_config_replaces_the_stored_one(trained: Path, tmp_path: Path, clean_env: dict[str, str]) -> None:
    marker = tmp_path / "popen.ran"
    ckpt = tamper(trained, tmp_path, popen_policy(marker))
    exp = str(REPO / "examples/cartpole/ppo.yaml")
    policy = hpcrl.load_policy(str(ckpt), config=exp)
    assert policy.version == hpcrl.load_policy(str(trained)).version
    proc = run_evaluate(clean_env, str(ckpt), "--config", exp)
    assert proc.returncode == 0, proc.stderr
    assert "2 episodes, return" in proc.stdout
    assert not marker.exists()


def test_trusted_stored_config_imports_user_module(trained: Path, tmp_path: Path, clean_env: dict[str, str]) -> None:
    name = "hpcrl_trust_user_module"
    imported = tmp_path / "user_module.imported"
    write_module(
        tmp_path,
        name,
        f"""
        from hpcrl.api.policy import register
        from hpcrl.policies.actor_critic import make_separate

        register("hpcrl-trust-module-policy", make_separate)
        open({str(imported)!r}, "w").close()
        """,
    )

    def edit(d: dict[str, Any]) -> None:
        d["experiment"]["imports"] = [name]
        d["policy"]["type_"] = "hpcrl-trust-module-policy"

    ckpt = tamper(trained, tmp_path, edit)
    env = dict(clean_env, PYTHONPATH=f"{tmp_path}:{clean_env['PYTHONPATH']}")
    proc = run_evaluate(env, str(ckpt))
    assert proc.returncode == 2 and f"experiment.imports[0] '{name}'" in proc.stderr, proc.stderr
    assert "policy.type_ 'hpcrl-trust-module-policy'" in proc.stderr and not imported.exists()
    proc = run_evaluate(env, str(ckpt), "--trust-checkpoint-config")
    assert proc.returncode == 0, proc.stderr
    assert "2 episodes, return" in proc.stdout and imported.exists()
