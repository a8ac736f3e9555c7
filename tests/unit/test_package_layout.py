"""The package's shape: user import paths, the API modules' import graph, the version's one home, setup.py."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO

API = REPO / "hpcrl" / "api"


def _hpcrl_imports(path: Path) -> set[str]:
    """Every ``hpcrl...`` module a source file imports, anywhere (TYPE_CHECKING blocks and functions too).

    ``from hpcrl.api import config`` counts as ``hpcrl.api.config`` when that is a module file;
    ``from hpcrl import x`` counts as the package root ``hpcrl``.
    """
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "hpcrl")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            if node.module.split(".")[0] != "hpcrl":
                continue
            base = REPO.joinpath(*node.module.split("."))
            subs = [a.name for a in node.names if (base / f"{a.name}.py").is_file()]
            found.update(f"{node.module}.{s}" for s in subs)
            if len(subs) < len(node.names):
                found.add(node.module)
    return found


def test_user_import_paths_of_the_design_work() -> None:
    code = (
        "from hpcrl.api.environment import Environment, StepResult, register as register_env, make as make_env\n"
        "from hpcrl.api.namedarray import NamedArray, namedarray\n"
        "from hpcrl.api.policy import Policy, RolloutRequest, RolloutResult, SingleModelPytorchPolicy, "
        "register as register_policy, make as make_policy\n"
        "from hpcrl.api.trainer import Trainer, SampleBatch, TrainerStepResult, "
        "register as register_trainer, make as make_trainer\n"
        "from hpcrl.api import config\n"
        "from hpcrl.testing import test_environment, test_pipeline\n"
        "from hpcrl.api.data import RolloutRequest, RolloutResult, SampleBatch, AnalyzedResult\n"
        "from hpcrl.trainers.ppo import AnalyzedResult\n"
        "from hpcrl import *\n"
    )
    exec(compile(code, "design-imports", "exec"), {})

    import hpcrl
    from hpcrl.api import data, policy, trainer
    from hpcrl.trainers import ppo

    # one class each, wherever it is imported from
    assert policy.RolloutRequest is data.RolloutRequest is hpcrl.RolloutRequest
    assert policy.RolloutResult is data.RolloutResult is hpcrl.RolloutResult
    assert trainer.SampleBatch is data.SampleBatch is hpcrl.SampleBatch
    assert ppo.AnalyzedResult is data.AnalyzedResult is hpcrl.AnalyzedResult
    assert all(hasattr(hpcrl, name) for name in hpcrl.__all__)


def test_api_modules_import_no_cycle_and_policy_not_trainer() -> None:
    graph = {
        f"hpcrl.api.{p.stem}": {m for m in _hpcrl_imports(p) if m.startswith("hpcrl.api.")}
        for p in sorted(API.glob("*.py"))
        if p.stem != "__init__"
    }
    assert "hpcrl.api.trainer" not in graph["hpcrl.api.policy"]
    assert "hpcrl.api.data" in graph["hpcrl.api.policy"] and "hpcrl.api.data" in graph["hpcrl.api.trainer"]
    assert not graph["hpcrl.api.data"] - {"hpcrl.api.namedarray"}, "the records module depends on NamedArray only"

    def cycle_from(start: str, path: list[str]) -> list[str] | None:
        for nxt in sorted(graph.get(path[-1], ())):
            if nxt == start:
                return [*path, nxt]
            if nxt not in path:
                found = cycle_from(start, [*path, nxt])
                if found:
                    return found
        return None

    cycles = [c for m in graph if (c := cycle_from(m, [m]))]
    assert not cycles, f"import cycles among hpcrl/api modules: {cycles}"


def test_no_module_imports_the_package_root() -> None:
    offenders = [
        str(p.relative_to(REPO))
        for p in sorted((REPO / "hpcrl").rglob("*.py"))
        if p != REPO / "hpcrl" / "__init__.py" and "hpcrl" in _hpcrl_imports(p)
    ]
    assert not offenders, (
        f"these import the package root hpcrl (use hpcrl._version or the defining module): {offenders}"
    )


def test_version_has_one_home_and_setup_reads_it(tmp_path: Path) -> None:
    import hpcrl
    from hpcrl import _version

    assert hpcrl.__version__ == _version.__version__
    assert f'"{_version.__version__}"' not in (REPO / "setup.py").read_text()
    out = subprocess.run(
        [sys.executable, str(REPO / "setup.py"), "--version"],
        cwd=tmp_path,  # setup.py finds its files from its own folder, not the working directory
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == _version.__version__


def test_setup_package_data_patterns_match_files() -> None:
    tree = ast.parse((REPO / "setup.py").read_text())
    (package_data,) = [
        ast.literal_eval(k.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        for k in node.keywords
        if k.arg == "package_data"
    ]
    for package, patterns in package_data.items():
        folder = REPO.joinpath(*package.split("."))
        for pattern in patterns:
            assert list(folder.glob(pattern)), f"setup.py package_data {package!r}: {pattern!r} matches no file"
