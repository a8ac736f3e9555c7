"""Checkpoints: tree round trips, atomic saves (kill -9), validated loads, rotation, modes and load_policy."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import pickle
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from hpcrl.storage import checkpoint as ckpt_mod
from hpcrl.storage.checkpoint import (
    CheckpointError,
    CheckpointManager,
    RunDirError,
    load_checkpoint,
    load_policy,
    prepare_run_dir,
    save_checkpoint,
)
from hpcrl.storage.rundir import RunDirLock
from hpcrl.storage.tree import decode_key, encode_key

REPO = Path(__file__).resolve().parents[2]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_same(a: object, b: object, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape, where
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for k in a:
            _assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}/{i}")
    elif isinstance(a, np.generic):
        assert type(a) is type(b) and a == b, where
    else:
        assert type(a) is type(b) and a == b, f"{where}: {a!r} != {b!r}"


# ============================================================== tree encoding
def test_tree_round_trip_all_types(tmp_path: Path) -> None:
    tree = {
        "policy": {
            "model": {
                "actor.0.weight": torch.randn(4, 3),
                "actor.0.bias": torch.randn(4, dtype=torch.float64),
                "half": torch.randn(2, 2).half(),
                "bf16": torch.randn(5, dtype=torch.bfloat16),
                "i64": torch.arange(6).reshape(2, 3),
                "i32": torch.arange(3, dtype=torch.int32),
                "u8": torch.tensor([0, 255], dtype=torch.uint8),
                "bool": torch.tensor([True, False]),
                "c64": torch.tensor([1 + 2j], dtype=torch.complex64),
                "scalar": torch.tensor(3.5),
                "empty": torch.zeros(0, 3),
                "noncontig": torch.arange(12.0).reshape(3, 4).t(),
            },
            "version": 7,
        },
        "state": {0: {"step": torch.tensor(1.0)}, 1: {"x": 1}, -3: "neg"},
        "arrays": [np.arange(5, dtype=np.int16), np.zeros((2, 0), np.float32), np.array(2.5), np.ones(3, ">f4")],
        "tuple": (1, 2.5, True, False, None, "", "héllo", b"\x00\x80raw"),
        "big": [2**64, -(2**100), 2**63 - 1, -(2**63)],
        "np_scalars": [np.float32(1.5), np.int64(-2), np.bool_(True), np.uint8(200)],
        "long_text": "x" * 100_000,
        "": 1,
        ".hidden": 2,
        "#hash": 3,
        "a/b": 4,
        "50%": 5,
        "..": 6,
    }
    p = save_checkpoint(tmp_path / "c.h5", tree, {"version": 1})
    back, attrs = load_checkpoint(p)
    expected = dict(tree)
    expected["policy"] = {**tree["policy"], "model": dict(tree["policy"]["model"])}
    expected["policy"]["model"]["noncontig"] = tree["policy"]["model"]["noncontig"].contiguous()
    _assert_same(expected, back)
    assert back["policy"]["model"]["bf16"].dtype == torch.bfloat16
    assert attrs["version"] == 1 and isinstance(attrs["hpcrl_version"], str)


def test_keys_are_readable_and_canonical(tmp_path: Path) -> None:
    p = save_checkpoint(tmp_path / "c.h5", {"policy": {"actor.0.weight": np.ones(2), 3: 1, "a/b": 2}}, {"version": 0})
    with h5py.File(p, "r") as f:
        assert set(f["policy"]) == {"actor.0.weight", "#3", "a%2Fb"}
        assert f["policy/actor.0.weight"].fletcher32
        assert f["policy/actor.0.weight"].attrs["@type"] == b"ndarray"
    for key in ["", ".", "..", "#1", "%", "%%2F", "a.b", 0, -5, 10**30]:
        assert decode_key(encode_key(key)) == key
    for bad in ["#01", "#x", "%41", "%zz", "%2f"]:
        with pytest.raises(ValueError):
            decode_key(bad)
    with pytest.raises(TypeError):
        encode_key(True)  # type: ignore[arg-type]


def test_adam_state_round_trip_gives_identical_next_step(tmp_path: Path) -> None:
    torch.manual_seed(0)

    def make() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
        return net, torch.optim.Adam(net.parameters(), lr=1e-2)

    net, opt = make()
    x = torch.randn(16, 5)
    for _ in range(2):
        opt.zero_grad()
        net(x).pow(2).mean().backward()
        opt.step()
    p = save_checkpoint(tmp_path / "c.h5", {"model": net.state_dict(), "opt": opt.state_dict()}, {"version": 2})
    tree, _ = load_checkpoint(p)
    assert set(tree["opt"]["state"]) == {0, 1, 2, 3}  # int keys come back as int
    net2, opt2 = make()
    net2.load_state_dict(tree["model"])
    opt2.load_state_dict(tree["opt"])
    for n, o in ((net, opt), (net2, opt2)):
        o.zero_grad()
        n(x).pow(2).mean().backward()
        o.step()
    for a, b in zip(net.parameters(), net2.parameters()):
        assert torch.equal(a, b)


def test_numpy_pcg64_state_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(12345)
    rng.random(10)
    p = save_checkpoint(tmp_path / "c.h5", {"rng": rng.bit_generator.state}, {"version": 0})
    tree, _ = load_checkpoint(p)
    assert tree["rng"]["state"]["state"] > 2**64  # a 128-bit int survived
    rng2 = np.random.default_rng()
    rng2.bit_generator.state = tree["rng"]
    np.testing.assert_array_equal(rng.random(5), rng2.random(5))


def test_torch_imported_lazily(tmp_path: Path, clean_env: dict[str, str]) -> None:
    code = textwrap.dedent(
        f"""
        import sys, numpy as np
        from hpcrl.storage.checkpoint import save_checkpoint, load_checkpoint
        p = save_checkpoint({str(tmp_path / "n.h5")!r}, {{"a": np.ones(3), "b": [1, "x"]}}, {{"version": 1}})
        load_checkpoint(p)
        assert "torch" not in sys.modules, "torch was imported"
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=clean_env)


# ============================================================== atomic saves
_CHILD = """
import os, sys, time
from pathlib import Path
import numpy as np
import hpcrl.storage.checkpoint as ck

run, marker = Path(sys.argv[1]), Path(sys.argv[2])
real_write, written = os.pwrite, [0]

def slow_write(fd, data, offset):
    # Writes about half of the file, then tells the parent it is mid-save and stalls.
    n = real_write(fd, data[: 32 << 20], offset)
    written[0] += n
    if written[0] > 100 << 20:
        marker.write_text("mid-save")
        time.sleep(120)
    return n

ck.os.pwrite = slow_write
big = {f"w{i}": np.full(2_500_000, i, np.float64) for i in range(10)}  # 10 x 20 MB
ck.CheckpointManager(run).save({"big": big}, {"version": 2})
"""


def test_kill9_during_save_keeps_previous_and_tmp_is_swept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, clean_env: dict[str, str]
) -> None:
    run = prepare_run_dir(tmp_path / "run")
    mgr = CheckpointManager(run)
    first = mgr.save({"w": np.arange(4.0)}, {"version": 1})
    before = _digest(first)
    marker = tmp_path / "marker"
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    child = subprocess.Popen([sys.executable, str(script), str(run), str(marker)], env=clean_env, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None, f"child exited early with {child.returncode}"
            assert time.monotonic() < deadline, "child never reached the middle of its save"
            time.sleep(0.02)
        tmp = run / "checkpoints" / f"ckpt-000000002.h5.tmp.{child.pid}"
        assert tmp.exists() and tmp.stat().st_size > 50 * 2**20  # ~100 MB were written before the stall
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    assert mgr.list() == [first]  # the temp file is not a checkpoint
    assert _digest(first) == before
    found = CheckpointManager(run).latest_valid()
    assert found is not None and found[0] == first and found[2]["version"] == 1
    with caplog.at_level(logging.WARNING, logger="hpcrl.storage.checkpoint"), RunDirLock.acquire(run):
        removed = CheckpointManager(run).sweep_tmp()
    assert removed == [tmp] and not tmp.exists()
    assert str(tmp) in caplog.text


def test_save_into_path_under_a_file_fails_cleanly(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    with pytest.raises(CheckpointError) as ei:
        save_checkpoint(blocker / "c.h5", {"a": 1}, {"version": 1})
    msg = str(ei.value)
    assert str(blocker / "c.h5") in msg and "ENOTDIR" in msg
    with pytest.raises(CheckpointError, match="ENOTDIR"):
        CheckpointManager(blocker).save({"a": 1}, {"version": 1})


@pytest.mark.parametrize("target", ["replace", "fsync"])
def test_disk_full_keeps_previous_and_removes_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    run = prepare_run_dir(tmp_path / "run")
    mgr = CheckpointManager(run)
    mgr.save({"w": np.arange(3.0)}, {"version": 5})
    dest = mgr.path_for(5)
    before = _digest(dest)

    def enospc(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ckpt_mod.os, target, enospc)
    with pytest.raises(CheckpointError) as ei:
        mgr.save({"w": np.arange(3.0) + 1}, {"version": 5})  # same version: would overwrite
    monkeypatch.undo()
    assert str(dest) in str(ei.value) and "ENOSPC" in str(ei.value)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [dest.name]  # no temp file left
    assert _digest(dest) == before
    assert load_checkpoint(dest)[0]["w"].tolist() == [0.0, 1.0, 2.0]


def test_unsupported_values_and_attrs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"/a/b: cannot store a builtins.set"):
        save_checkpoint(tmp_path / "c.h5", {"a": {"b": {1, 2}}}, {"version": 1})
    with pytest.raises(CheckpointError, match="dtype <U1"):
        save_checkpoint(tmp_path / "c.h5", {"a": np.array(["x"])}, {"version": 1})
    with pytest.raises(CheckpointError, match="attribute 'layout'"):
        save_checkpoint(tmp_path / "c.h5", {}, {"version": 1, "layout": {"a": 1}})
    with pytest.raises(CheckpointError, match="'@type'"):
        save_checkpoint(tmp_path / "c.h5", {}, {"@type": "x"})
    with pytest.raises(CheckpointError, match="version"):
        CheckpointManager(tmp_path).save({}, {"frames": 3})
    assert list(tmp_path.iterdir()) == []


# ============================================================== validated loading
def _two_checkpoints(tmp_path: Path) -> tuple[CheckpointManager, Path, Path]:
    run = prepare_run_dir(tmp_path / "run")
    mgr = CheckpointManager(run)
    old = mgr.save({"policy": {"actor.0.weight": np.arange(100_000, dtype=np.float32)}}, {"version": 1})
    new = mgr.save({"policy": {"actor.0.weight": np.arange(100_000, dtype=np.float32) * 2}}, {"version": 2})
    return mgr, old, new


def test_truncated_file_is_reported_and_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    mgr, old, new = _two_checkpoints(tmp_path)
    os.truncate(new, new.stat().st_size // 2)
    with pytest.raises(CheckpointError, match=str(new)):
        load_checkpoint(new)
    with caplog.at_level(logging.WARNING, logger="hpcrl.storage.checkpoint"):
        found = mgr.latest_valid()
    assert found is not None and found[0] == old
    assert any(str(new) in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_bit_flip_names_file_and_dataset(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    mgr, old, new = _two_checkpoints(tmp_path)
    with h5py.File(new, "r") as f:
        offset = f["policy/actor.0.weight"].id.get_chunk_info(0).byte_offset
    with open(new, "r+b") as fh:
        fh.seek(offset + 1000)
        b = fh.read(1)
        fh.seek(offset + 1000)
        fh.write(bytes([b[0] ^ 0x10]))
    with pytest.raises(CheckpointError) as ei:
        load_checkpoint(new)
    assert str(new) in str(ei.value) and "/policy/actor.0.weight" in str(ei.value)
    assert "fletcher32" in str(ei.value) or "checksum" in str(ei.value)
    with caplog.at_level(logging.WARNING, logger="hpcrl.storage.checkpoint"):
        path, tree, attrs = mgr.latest_valid()  # type: ignore[misc]
    assert path == old and attrs["version"] == 1 and tree["policy"]["actor.0.weight"][3] == 3.0
    assert str(new) in caplog.text


def test_all_corrupt_is_an_error_not_a_fresh_start(tmp_path: Path) -> None:
    mgr, old, new = _two_checkpoints(tmp_path)
    for p in (old, new):
        os.truncate(p, 100)
    with pytest.raises(CheckpointError, match=r"2 checkpoints in .*none valid"):
        mgr.latest_valid()
    assert CheckpointManager(tmp_path / "empty").latest_valid() is None


def _craft(path: Path, build: object) -> Path:
    with h5py.File(path, "w", libver=("v110", "v110")) as f:
        f.attrs["@format"] = np.bytes_(ckpt_mod.FORMAT)
        f.attrs["@type"] = np.bytes_("dict")
        build(f)  # type: ignore[operator]
    return path


class _Boom:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {os.environ['HPCRL_TEST_MARKER']}",))


def _tagged(ds: h5py.Dataset, tag: str, **attrs: object) -> None:
    ds.attrs["@type"] = np.bytes_(tag)
    for k, v in attrs.items():
        ds.attrs[k] = v


@pytest.mark.parametrize(
    "case, expect",
    [
        ("object_dtype", "string/variable-length"),
        ("pickle_tag", "unknown @type tag 'pickle'"),
        ("shape_mismatch", "does not match the recorded @shape"),
        ("dtype_mismatch", "does not match the recorded"),
        ("no_checksum", "fletcher32"),
        ("external", "external or virtual"),
        ("soft_link", "SoftLink links are not allowed"),
        ("missing_tag", "missing @type"),
        ("bad_bigint", "expected a decimal integer"),
        ("compound", "numeric"),
    ],
)
def test_crafted_files_are_rejected_without_executing_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str, expect: str
) -> None:
    marker = tmp_path / "pwned"
    monkeypatch.setenv("HPCRL_TEST_MARKER", str(marker))
    payload = np.frombuffer(pickle.dumps(_Boom()), dtype=np.uint8)
    raw = tmp_path / "raw.bin"
    raw.write_bytes(b"\0" * 64)

    def build(f: h5py.File) -> None:
        if case == "object_dtype":
            ds = f.create_dataset("x", data=np.array(["a", "b"], dtype=object), dtype=h5py.string_dtype())
            _tagged(ds, "ndarray", **{"@shape": np.array([2]), "@dtype": np.bytes_("<f8")})
        elif case == "pickle_tag":
            _tagged(f.create_dataset("x", data=payload, chunks=True, fletcher32=True), "pickle")
        elif case == "shape_mismatch":
            ds = f.create_dataset("x", data=np.ones(4), chunks=(4,), fletcher32=True)
            _tagged(ds, "ndarray", **{"@shape": np.array([2, 2]), "@dtype": np.bytes_("<f8")})
        elif case == "dtype_mismatch":
            ds = f.create_dataset("x", data=np.ones(4), chunks=(4,), fletcher32=True)
            _tagged(ds, "tensor", **{"@shape": np.array([4]), "@dtype": np.bytes_("float32")})
        elif case == "no_checksum":
            ds = f.create_dataset("x", data=np.ones(4))
            _tagged(ds, "ndarray", **{"@shape": np.array([4]), "@dtype": np.bytes_("<f8")})
        elif case == "external":
            ds = f.create_dataset("x", shape=(8,), dtype="<f8", external=[(str(raw), 0, 64)])
            _tagged(ds, "ndarray", **{"@shape": np.array([8]), "@dtype": np.bytes_("<f8")})
        elif case == "soft_link":
            g = f.create_group("g")
            g.attrs["@type"] = np.bytes_("dict")
            f["link"] = h5py.SoftLink("/g")
        elif case == "missing_tag":
            f.create_dataset("x", data=payload, chunks=True, fletcher32=True)
        elif case == "bad_bigint":
            _tagged(f.create_dataset("x", data=np.array(b"__import__('os')", dtype="S16")), "bigint")
        elif case == "compound":
            ds = f.create_dataset(
                "x", data=np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")]), chunks=(2,), fletcher32=True
            )
            _tagged(ds, "ndarray", **{"@shape": np.array([2]), "@dtype": np.bytes_("<f4")})

    p = _craft(tmp_path / "crafted.h5", build)
    with pytest.raises(CheckpointError) as ei:
        load_checkpoint(p)
    assert str(p) in str(ei.value) and expect in str(ei.value)
    assert not marker.exists()


def test_opaque_bytes_are_never_unpickled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "pwned"
    monkeypatch.setenv("HPCRL_TEST_MARKER", str(marker))
    blob = pickle.dumps(_Boom())
    p = save_checkpoint(tmp_path / "c.h5", {"blob": blob}, {"version": 1})
    tree, _ = load_checkpoint(p)
    assert tree["blob"] == blob and not marker.exists()


@pytest.mark.parametrize("content", [b"", b"this is not HDF5\n" * 100])
def test_non_hdf5_and_foreign_files(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "x.h5"
    p.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a readable HDF5 file"):
        load_checkpoint(p)
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["a"] = 1
    with pytest.raises(CheckpointError, match="not an hpcrl checkpoint"):
        load_checkpoint(tmp_path / "plain.h5")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.h5")


# ============================================================== rotation, modes, run dir
def test_keep_k_pruning(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep=2)
    for v in range(1, 6):
        mgr.save({"v": v}, {"version": v})
    assert [p.name for p in mgr.list()] == ["ckpt-000000005.h5", "ckpt-000000004.h5"]
    # A corrupt newer file is kept (as evidence) and does not count as one of the K valid ones.
    bad = mgr.path_for(99)
    bad.write_bytes(b"garbage")
    mgr.save({"v": 6}, {"version": 6})
    assert [p.name for p in mgr.list()] == [bad.name, "ckpt-000000006.h5", "ckpt-000000005.h5"]
    assert mgr.latest_valid()[0] == mgr.path_for(6)  # type: ignore[index]


def test_modes_and_prepare_run_dir(tmp_path: Path) -> None:
    run = prepare_run_dir(tmp_path / "a" / "run")
    for d in (run, run / "checkpoints", run / "traces"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    p = CheckpointManager(tmp_path / "other").save({"x": 1}, {"version": 3})
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert stat.S_IMODE(p.parent.stat().st_mode) == 0o700
    assert prepare_run_dir(run) == run  # idempotent


def test_prepare_run_dir_not_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RunDirError, match=rf"run dir {blocker / 'run'} is not writable: ENOTDIR"):
        prepare_run_dir(blocker / "run")


def test_sweep_ignores_other_files(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path)
    d = tmp_path / "checkpoints"
    d.mkdir()
    dead = _dead_pid()
    (d / f"ckpt-000000001.h5.tmp.{dead}").write_bytes(b"x")
    (d / "notes.txt").write_text("keep me")
    with RunDirLock.acquire(tmp_path):
        assert [p.name for p in mgr.sweep_tmp()] == [f"ckpt-000000001.h5.tmp.{dead}"]
    assert [p.name for p in d.iterdir()] == ["notes.txt"]


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ============================================================== load_policy
def test_load_policy_from_file_and_run_dir(tmp_path: Path) -> None:
    from hpcrl.api import config
    from hpcrl.api.policy import SingleModelPytorchPolicy, register

    class TinyPolicy(SingleModelPytorchPolicy):
        def __init__(self, n: int = 3) -> None:
            super().__init__(torch.nn.Linear(n, 2))

        def rollout(self, request, **kwargs):  # type: ignore[no-untyped-def]
            raise NotImplementedError

        def analyze(self, sample, target="ppo", **kwargs):  # type: ignore[no-untyped-def]
            raise NotImplementedError

    name = "test-storage-tiny-policy"
    register(name, TinyPolicy)
    cfg = config.from_dict(
        {"environment": {"type_": "none"}, "policy": {"type_": name, "args": {"n": 5}}, "trainer": {"type_": "null"}}
    )
    src = TinyPolicy(n=5)
    for _ in range(4):
        src.inc_version()
    run = prepare_run_dir(tmp_path / "run")
    tree = {"policy": src.get_checkpoint(), "trainer": {}, "system": {"frames": 10}}
    path = CheckpointManager(run).save(tree, {"version": src.version, "config": config.dump(cfg)})
    for where in (path, run, run / "checkpoints", str(run)):
        pol = load_policy(where)
        assert isinstance(pol, TinyPolicy) and pol.version == 4
        for a, b in zip(pol.parameters(), src.parameters()):
            assert torch.equal(a, b)
    with pytest.raises(CheckpointError, match="no checkpoints"):
        load_policy(tmp_path)
    bare = save_checkpoint(tmp_path / "bare.h5", tree, {"version": 1})
    with pytest.raises(CheckpointError, match="no 'config' attribute"):
        load_policy(bare)


def test_random_bit_flips_are_detected_or_harmless(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = torch.nn.Linear(6, 3)
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(2, 6)).sum().backward()
    opt.step()
    tree = {"model": net.state_dict(), "opt": opt.state_dict(), "s": "hello", "n": None, "big": 2**100}
    p = save_checkpoint(tmp_path / "c.h5", tree, {"version": 1, "config": "a: 1"})
    with h5py.File(p, "r") as f:  # scalars live in the checksummed object header
        assert f["opt/state/#0/step"].id.get_create_plist().get_layout() == h5py.h5d.COMPACT
        assert f["s"].id.get_create_plist().get_layout() == h5py.h5d.COMPACT
    ref_tree, ref_attrs = load_checkpoint(p)
    data = p.read_bytes()
    rnd = np.random.default_rng(0)
    bad = tmp_path / "bad.h5"
    detected = 0
    for pos, bit in zip(rnd.integers(0, len(data), 300), rnd.integers(0, 8, 300)):
        flipped = bytearray(data)
        flipped[pos] ^= 1 << int(bit)
        bad.write_bytes(bytes(flipped))
        try:
            got, attrs = load_checkpoint(bad)
        except CheckpointError:
            detected += 1
            continue
        _assert_same(ref_tree, got, f"flip at byte {pos}")  # undetected flips must not change anything
        assert attrs == ref_attrs, f"flip at byte {pos}"
    assert detected > 150
