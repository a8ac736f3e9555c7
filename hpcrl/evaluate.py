"""Evaluate a trained policy: ``python -m hpcrl.evaluate RUN_DIR|CHECKPOINT [--episodes N]``.

Builds the policy and the environment from the config stored in the checkpoint, acts
deterministically (``is_evaluation``) and prints the mean and standard deviation of the episode
returns. The stored config is used only if everything it names is registered in this process
(the built-ins); otherwise pass your own experiment file with ``--config EXP.yaml``, or
``--trust-checkpoint-config`` for a checkpoint whose writer you trust (see
:mod:`hpcrl.storage.stored_config`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from hpcrl.api.config import ExperimentConfig

__all__ = ["evaluate", "main"]

log = logging.getLogger(__name__)


def _load(
    path: Path, config: ExperimentConfig | str | Path | None, trust_config: bool
) -> tuple[ExperimentConfig, Any, Path]:
    from hpcrl.storage.checkpoint import find_checkpoint
    from hpcrl.storage.stored_config import loading_config

    file, tree, attrs = find_checkpoint(path)
    cfg = loading_config(file, attrs, config=config, trust_config=trust_config, environment=True)
    return cfg, tree, file


def evaluate(
    path: str | Path,
    episodes: int = 10,
    envs: int = 4,
    seed: int = 12345,
    stochastic: bool = False,
    *,
    config: ExperimentConfig | str | Path | None = None,
    trust_config: bool = False,
) -> dict[str, Any]:
    """Run ``episodes`` evaluation episodes of the policy in ``path`` (a checkpoint or a run dir).

    Args:
        path: checkpoint file or run directory (its newest valid checkpoint).
        episodes: episodes to finish (per-agent episodes for multi-agent envs).
        envs: environments stepped side by side.
        seed: base seed of the evaluation envs (different from training's by default).
        stochastic: sample actions instead of acting deterministically.
        config: build the policy and env from this config (an ``ExperimentConfig`` or a YAML file) instead
            of the stored one; its ``experiment.imports`` are imported.
        trust_config: build what the stored config names, importing its ``experiment.imports``.

    Returns:
        ``{"checkpoint", "version", "episodes", "mean_return", "std_return", "mean_length", "returns"}``.

    Raises:
        UntrustedConfigError: (a ``CheckpointError``) the stored config names code not registered in this
            process (a policy or env ``type_``, a ``"module:attribute"`` argument, a module of
            ``experiment.imports`` not imported yet); nothing it names was imported or called.
        ValueError: ``episodes`` or ``envs`` is below 1.
    """
    for name, value in (("episodes", episodes), ("envs", envs)):
        if value < 1:
            raise ValueError(f"evaluate: {name} must be >= 1, got {value}")
    import dataclasses

    from hpcrl.acting import rings
    from hpcrl.acting.inline import InlineLoop, drop
    from hpcrl.api.policy import make as make_policy
    from hpcrl.runtime import components

    cfg, tree, file = _load(Path(path), config, trust_config)
    components.set_torch_threads(cfg.run.torch_threads)
    policy = make_policy(cfg.single_policy)
    policy.load_checkpoint(tree["policy"])
    # the evaluation's own envs: ``envs`` of them, seeded from ``seed``, checked on their first steps, never recreated
    actor = dataclasses.replace(
        cfg.actor, envs_per_actor=envs, fragment_length=16, check_env="first", env_failure="fail"
    )
    ring = rings.make_ring(
        dataclasses.replace(cfg, actor=actor, experiment=dataclasses.replace(cfg.experiment, seed=seed)),
        rings.default_state_row(policy),
        "evaluate",
        evaluation=not stochastic,
    )
    returns: list[float] = []
    lengths: list[int] = []

    def finished(done: list[Any]) -> None:
        returns.extend(e.ret for e in done)
        lengths.extend(e.length for e in done)

    loop = InlineLoop(
        ring, policy, f"{cfg.single_policy.type_!r} ({type(policy).__name__})", fragments=drop, episodes=finished
    )
    try:
        while len(returns) < episodes:
            loop.step()
    finally:
        ring.close()
    returns, lengths = returns[:episodes], lengths[:episodes]
    return {
        "checkpoint": str(file),
        "version": int(policy.version),
        "episodes": len(returns),
        "mean_return": float(np.mean(returns)),
        "std_return": float(np.std(returns)),
        "mean_length": float(np.mean(lengths)),
        "returns": returns,
    }


def _at_least_one(text: str) -> int:
    """The type of ``--episodes``/``--envs``: an integer >= 1 (``--episodes 0`` would average nothing)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(prog="python -m hpcrl.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("path", help="run directory or checkpoint file")
    p.add_argument("--episodes", type=_at_least_one, default=10, help="episodes to finish (>= 1)")
    p.add_argument("--envs", type=_at_least_one, default=4, help="environments stepped side by side (>= 1)")
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--stochastic", action="store_true", help="sample actions instead of the deterministic action")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--config",
        default=None,
        metavar="EXP.yaml",
        help="build the policy and env from this experiment file (its experiment.imports are imported) "
        "instead of the config stored in the checkpoint",
    )
    p.add_argument(
        "--trust-checkpoint-config",
        action="store_true",
        help="build what the config stored in the checkpoint names and import its experiment.imports "
        "(only for checkpoints whose writer you trust)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from hpcrl.api.config import ConfigError
    from hpcrl.storage.checkpoint import CheckpointError
    from hpcrl.storage.stored_config import UntrustedConfigError

    try:
        out = evaluate(
            args.path,
            args.episodes,
            args.envs,
            args.seed,
            args.stochastic,
            config=args.config,
            trust_config=args.trust_checkpoint_config,
        )
    except UntrustedConfigError as e:
        why = e.describe("pass your own experiment file with --config EXP.yaml", "--trust-checkpoint-config")
        sys.stderr.write(f"hpcrl.evaluate: {why}\n")
        return 2
    except ConfigError as e:
        sys.stderr.write(f"hpcrl.evaluate: config error: {e}\n")
        return 2
    except (CheckpointError, FileNotFoundError, ImportError) as e:
        sys.stderr.write(f"hpcrl.evaluate: {e}\n")
        return 2
    if args.json:
        sys.stdout.write(json.dumps(out) + "\n")
    else:
        sys.stdout.write(
            f"{out['checkpoint']} (version {out['version']}): {out['episodes']} episodes, "
            f"return {out['mean_return']:.2f} +- {out['std_return']:.2f}, mean length {out['mean_length']:.1f}\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
