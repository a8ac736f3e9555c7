"""The deployment round trips :func:`hpcrl.testing.test_pipeline` checks after training.

Under ``mpiexec`` the policy that acts is never the object the trainer trains: inference ranks and
inline-inference actors hold their own instance and load what the trainer leader publishes
(``state_dict()`` -> wire -> ``load_state_dict()`` -> ``set_version()``), and a resumed run loads a
checkpoint written by the HDF5 writer (``get_checkpoint()`` -> file -> ``load_checkpoint()``). Both paths
are replayed here in one process on a second policy instance whose weights were scrambled first, so a
``load_state_dict``/``load_checkpoint`` that loads nothing cannot pass by accident. The second instance
must then report the same version and give the same outputs as the trained policy on the same
deterministic (``is_evaluation``) request: the same actions, and the same analysed result and next
policy state wherever the trained policy gives those deterministically. After ``load_state_dict`` its
``state_dict()`` must also equal what was published.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from hpcrl.api import config
from hpcrl.api.namedarray import NamedArray
from hpcrl.api.policy import Policy, RolloutRequest, RolloutResult
from hpcrl.api.policy import make as make_policy
from hpcrl.api.trainer import Trainer
from hpcrl.api.trainer import make as make_trainer
from hpcrl.testing.pipeline import PipelineError

__all__ = ["Twins", "scramble", "evaluation_request", "reference_outputs", "check_publish", "check_checkpoint"]

#: deterministic float actions of two instances with the same weights may differ by this much (BLAS order).
_RTOL, _ATOL = 1e-5, 1e-6


class Twins:
    """Builds second instances of a policy: from its spec, or as deep copies of its untrained state.

    Args:
        policy: the policy test_pipeline trains (not yet trained).
        spec: the spec it was built from, or ``None`` when the caller passed an instance.

    Raises:
        PipelineError: an instance that cannot be deep-copied (names the policy and the way out).
    """

    def __init__(self, policy: Policy, spec: config.Policy | None) -> None:
        self.spec = spec
        self.name = type(policy).__name__
        self._snapshot: Policy | None = None
        if spec is None:
            try:
                self._snapshot = copy.deepcopy(policy)
            except Exception as e:
                raise PipelineError(
                    f"policy {self.name}: test_pipeline checks the publish and checkpoint round trips on a second "
                    f"instance, and copy.deepcopy of the given instance failed ({type(e).__name__}: {e}); pass the "
                    f"policy as a config.Policy spec or a registered name instead"
                ) from e

    def make(self) -> Policy:
        """A fresh second instance with scrambled weights (see :func:`scramble`)."""
        twin = make_policy(self.spec) if self.spec is not None else copy.deepcopy(self._snapshot)
        assert twin is not None
        scramble(twin)
        return twin


def scramble(policy: Policy) -> None:
    """Overwrite a policy's float weights in place with noise (its ``parameters()`` and ``state_dict()`` values).

    After this, a ``load_state_dict``/``load_checkpoint`` that loads nothing leaves weights that act
    differently from the trained ones. Values that are copies, read-only or not float are left alone.
    """
    rng = np.random.default_rng(20240607)
    seen: set[int] = set()
    values = list(policy.parameters()) + list(policy.state_dict().values())
    for v in values:
        if id(v) in seen:
            continue
        seen.add(id(v))
        if isinstance(v, np.ndarray):
            if v.dtype.kind == "f" and v.flags.writeable:
                v += np.asarray(rng.normal(0.0, 1.0, v.shape), v.dtype)
        elif hasattr(v, "is_floating_point") and v.is_floating_point():
            import torch

            noise = torch.from_numpy(rng.normal(0.0, 1.0, tuple(v.shape)).astype(np.float32))
            with torch.no_grad():
                v.add_(noise.to(device=v.device, dtype=v.dtype))


def evaluation_request(request: RolloutRequest) -> RolloutRequest:
    """A copy of ``request`` (owning its arrays) with every row marked ``is_evaluation``."""
    own: RolloutRequest = request.apply(np.array)
    rows = len(own.obs)
    own.is_evaluation = np.ones((rows, 1), np.bool_)
    return own


def _outputs(policy: Policy, request: RolloutRequest, who: str) -> dict[str, np.ndarray]:
    """``path -> array`` of every leaf of the policy's result on ``request`` (``action.x``, ``analyzed_result.*``)."""
    try:
        result = policy.rollout(request)
    except Exception as e:
        raise PipelineError(f"{who}: rollout failed: {type(e).__name__}: {e}") from e
    if not isinstance(result, RolloutResult) or not isinstance(result.action, NamedArray):
        raise PipelineError(f"{who}: rollout returned {type(result).__name__}, expected a RolloutResult")
    out = {}
    for part in ("action", "analyzed_result", "policy_state"):
        na = getattr(result, part)
        if isinstance(na, NamedArray):
            for path, x in na.flat_items():
                out[f"{part}.{path}"] = np.array(x.detach().cpu().numpy() if hasattr(x, "detach") else x)
    return out


def _same(x: np.ndarray, y: np.ndarray) -> bool:
    if x.shape != y.shape or x.dtype != y.dtype:
        return False
    if x.dtype.kind in "fc":
        return bool(np.allclose(x, y, rtol=_RTOL, atol=_ATOL, equal_nan=True))
    return bool(np.array_equal(x, y))


def _differs(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> str | None:
    """The first field of ``a`` that ``b`` lacks or gives differently, described; ``None`` if they agree."""
    for k, x in a.items():
        y = b.get(k)
        if y is None:
            return f"{k} is missing"
        if x.shape != y.shape or x.dtype != y.dtype:
            return f"{k}: {x.dtype} {x.shape} vs {y.dtype} {y.shape}"
        if not _same(x, y):
            bad = int(np.sum(~np.isclose(x, y, rtol=_RTOL, atol=_ATOL) if x.dtype.kind in "fc" else x != y))
            return f"{k} differs in {bad} of {x.size} element(s)"
    return None


def reference_outputs(policy: Policy, request: RolloutRequest) -> dict[str, np.ndarray]:
    """The trained policy's deterministic outputs on ``request``: its actions, and other leaves two calls agree on.

    Raises:
        PipelineError: two calls on the same ``is_evaluation`` request gave different actions.
    """
    name = type(policy).__name__
    first = _outputs(policy, request, f"policy {name}")
    again = _outputs(policy, request, f"policy {name}")
    actions = {k: v for k, v in first.items() if k.startswith("action.")}
    diff = _differs(actions, again)
    if diff is not None:
        raise PipelineError(
            f"policy {name}.rollout is not deterministic on is_evaluation rows ({diff} between two calls on the "
            f"same request); RolloutRequest.is_evaluation asks for deterministic actions, which test_pipeline "
            f"compares to check that published and checkpointed weights act like the trained ones"
        )
    return {k: v for k, v in first.items() if k in again and _same(v, again[k])}


def _state_differs(published: dict[str, np.ndarray], loaded: dict[str, np.ndarray]) -> str | None:
    if published.keys() != loaded.keys():
        missing = sorted(set(published) - set(loaded))
        extra = sorted(set(loaded) - set(published))
        return f"its keys differ from the published ones (missing {missing}, unexpected {extra})"
    for k, x in published.items():
        if not _same(x, loaded[k]):
            return f"state_dict()[{k!r}] differs from the published value"
    return None


def check_publish(policy: Policy, twin: Policy, request: RolloutRequest, expected: dict[str, np.ndarray]) -> None:
    """Replay the publish path on ``twin``: ``state_dict()`` -> wire -> ``load_state_dict()`` -> ``set_version()``.

    Raises:
        PipelineError: a step fails, or ``twin`` then acts differently or reports another version (the
            message names the policy and the method at fault).
    """
    from hpcrl.comm.params import ParamsError, published_copy

    name = type(policy).__name__
    version = int(policy.version)
    try:
        state = policy.state_dict()
    except Exception as e:
        raise PipelineError(f"policy {name}.state_dict() failed: {type(e).__name__}: {e}") from e
    try:
        received = published_copy(state)
    except ParamsError as e:
        raise PipelineError(f"policy {name}.state_dict() cannot be published to inference ranks: {e}") from e
    try:
        twin.load_state_dict(received)
    except Exception as e:
        raise PipelineError(
            f"policy {name}.load_state_dict() failed on the published state_dict() (name -> read-only numpy "
            f"array, as inference ranks receive it): {type(e).__name__}: {e}"
        ) from e
    try:
        twin.set_version(version)
    except Exception as e:
        raise PipelineError(f"policy {name}.set_version({version}) failed: {type(e).__name__}: {e}") from e
    if twin.version != version:
        raise PipelineError(
            f"policy {name}: after set_version({version}) its version is {twin.version}; version, inc_version "
            f"and set_version must use one counter (override all three or none)"
        )
    try:
        loaded = published_copy(twin.state_dict())
    except Exception as e:
        raise PipelineError(f"policy {name}.state_dict() failed after load_state_dict(): {e}") from e
    diff = _state_differs(received, loaded)
    if diff is not None:
        raise PipelineError(
            f"policy {name}.load_state_dict() did not load the published weights: after loading them into a second "
            f"instance, {diff}. Inference ranks would act with other weights than the trainer's"
        )
    diff = _differs(expected, _outputs(twin, request, f"policy {name} (loaded from its published state_dict)"))
    if diff is not None:
        what = "state_dict() is empty" if not state else f"state_dict() has {len(state)} entries"
        raise PipelineError(
            f"policy {name}: a second instance that loaded the published weights acts differently from the trained "
            f"policy ({diff}; {what}): inference ranks would act with other weights than the trainer's. "
            f"{name}.state_dict() must return every trained weight and {name}.load_state_dict() must load them"
        )


def _storage_culprit(error: Exception) -> str:
    """``policy``/``trainer``/``system``: the tree part named by a checkpoint writer's error path."""
    text = str(error.__cause__ or error)
    for part in ("policy", "trainer"):
        if text.startswith(f"/{part}/") or text.startswith(f"/{part}:"):
            return part
    return "system"


def check_checkpoint(
    policy: Policy,
    trainer: Trainer,
    learner: Any,
    twin: Policy,
    trainer_spec: config.Trainer | None,
    request: RolloutRequest,
    expected: dict[str, np.ndarray],
) -> None:
    """Write the run's checkpoint tree with the real HDF5 writer, read it back, restore it into ``twin``.

    Args:
        policy: the trained policy.
        trainer: its trainer.
        learner: the :class:`~hpcrl.learning.learner.Learner` that ran them (its tree is saved as a run saves it).
        twin: a second, scrambled policy instance.
        trainer_spec: the trainer's spec (a fresh trainer for ``twin`` loads the trainer state), or ``None``
            (the given trainer loads it back).
        request: a deterministic request.
        expected: the trained policy's outputs on ``request`` (:func:`reference_outputs`).

    Raises:
        PipelineError: the tree cannot be stored (names the offending entry's path), or cannot be loaded
            back, or ``twin`` then acts differently or reports another version.
    """
    from hpcrl.learning.checkpointing import checkpoint_contents
    from hpcrl.storage.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    name, tname = type(policy).__name__, type(trainer).__name__
    for who, obj in ((f"policy {name}", policy), (f"trainer {tname}", trainer)):
        try:
            obj.get_checkpoint()
        except Exception as e:
            raise PipelineError(f"{who}.get_checkpoint() failed: {type(e).__name__}: {e}") from e
    tree, attrs = checkpoint_contents(learner, "test_pipeline")
    with tempfile.TemporaryDirectory(prefix="hpcrl-test-pipeline-") as tmp:
        path = Path(tmp) / "ckpt-000000001.h5"
        try:
            save_checkpoint(path, tree, attrs)
        except CheckpointError as e:
            part = _storage_culprit(e)
            whom = {"policy": f"policy {name}", "trainer": f"trainer {tname}"}.get(part)
            cause = str(e.__cause__ or e)
            if whom is None:
                raise PipelineError(f"the checkpoint cannot be written: {e}") from e
            raise PipelineError(
                f"{whom}.get_checkpoint() returns a value a checkpoint cannot hold: {cause} (checkpoint trees hold "
                f"dicts, lists, tensors, arrays and plain values; see hpcrl.storage.tree)"
            ) from e
        try:
            back, _ = load_checkpoint(path)
        except CheckpointError as e:
            raise PipelineError(
                f"the checkpoint written for policy {name} / trainer {tname} does not read back: {e}"
            ) from e
    try:
        twin.load_checkpoint(back["policy"])
    except Exception as e:
        raise PipelineError(
            f"policy {name}.load_checkpoint() failed on its own checkpoint read back from HDF5: {type(e).__name__}: {e}"
        ) from e
    if twin.version != policy.version:
        raise PipelineError(
            f"policy {name}: after load_checkpoint() its version is {twin.version}, the checkpointed policy's "
            f"{policy.version}; get_checkpoint() must store the version and load_checkpoint() restore it "
            f"(set_version)"
        )
    diff = _differs(expected, _outputs(twin, request, f"policy {name} (restored from its checkpoint)"))
    if diff is not None:
        raise PipelineError(
            f"policy {name}: a second instance restored with load_checkpoint() acts differently from the trained "
            f"policy ({diff}): {name}.get_checkpoint() must store every trained weight and load_checkpoint() must "
            f"restore them"
        )
    target = make_trainer(trainer_spec, twin) if trainer_spec is not None else trainer
    try:
        target.load_checkpoint(back.get("trainer", {}))
    except Exception as e:
        raise PipelineError(
            f"trainer {tname}.load_checkpoint() failed on its own checkpoint read back from HDF5: "
            f"{type(e).__name__}: {e}"
        ) from e
