"""Chunked training of recurrent policies: the trainer arguments ``chunk_len`` and ``burn_in``.

A recurrent policy is trained on whole sequences: ``analyze`` replays its GRU/LSTM from the
``policy_state`` stored at the sequence's first row (the state the actor had there), zeroing it
at every ``on_reset`` row. Without ``chunk_len`` a sequence is a whole fragment of ``T`` decision
rows (``actor.fragment_length``). With ``chunk_len = L`` (``T % L == 0``) every fragment column is
cut into ``T / L`` chunks of ``L`` consecutive rows, and each chunk is replayed from the state
stored at *its* first row:

* backpropagation through time is limited to ``L`` steps, and the chunks are the minibatch
  units, so the chunks of one fragment land in different minibatches;
* advantages and returns are still computed over the whole fragment first, so a chunk boundary
  does not cut the credit assignment;
* the bootstrap row ``T`` is not analysed (it is never a decision).

With ``burn_in = K`` (``0 <= K < L``) the first ``K`` rows of every chunk only warm up the
state: the policy replays them from the stored state, but they carry no loss and no gradient
(they are masked out of every mean, like non-decision rows). The stored state was computed by the
policy that acted, possibly several versions ago; the burn-in rows let the current weights rebuild
it before the rows that are trained on. ``burn_in`` without ``chunk_len`` applies to the whole
fragment as one chunk.

Row layout: a ``(T, B, ...)`` leaf becomes ``(L, (T / L) * B, ...)``; column ``c * B + b`` is chunk
``c`` of fragment column ``b``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpcrl.api import config

if TYPE_CHECKING:
    import torch

    from hpcrl.api.data import SampleBatch

__all__ = ["check_chunk_args", "check_fragment", "check_config", "split_time", "chunk_batch"]


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _divisors_above(t: int, floor: int) -> list[int]:
    return [d for d in range(1, t + 1) if t % d == 0 and d > floor]


def check_chunk_args(chunk_len: Any, burn_in: Any) -> tuple[int | None, int]:
    """Validate ``chunk_len`` / ``burn_in`` on their own (no fragment length known).

    Returns:
        ``(chunk_len or None, burn_in)`` as ints.

    Raises:
        ValueError: ``chunk_len`` is not a positive int or ``None``; ``burn_in`` is not an int >= 0; or
            ``chunk_len <= burn_in`` (the message names ``trainer.args.chunk_len`` / ``trainer.args.burn_in``).
    """
    if chunk_len is not None and (not _is_int(chunk_len) or chunk_len < 1):
        raise ValueError(
            f"trainer.args.chunk_len: expected a positive int (steps per chunk) or null, got {chunk_len!r}"
        )
    if not _is_int(burn_in) or burn_in < 0:
        raise ValueError(f"trainer.args.burn_in: expected an int >= 0 (warm-up steps per chunk), got {burn_in!r}")
    if chunk_len is not None and chunk_len <= burn_in:
        raise ValueError(
            f"trainer.args.chunk_len: {chunk_len} must be greater than trainer.args.burn_in {burn_in} "
            f"(the first burn_in steps of each chunk carry no loss, so a chunk needs more steps than that)"
        )
    return chunk_len, int(burn_in)


def check_fragment(chunk_len: int | None, burn_in: int, t: int, fragment: str = "actor.fragment_length") -> None:
    """Check ``chunk_len`` / ``burn_in`` against fragments of ``t`` decision rows.

    Args:
        chunk_len: steps per chunk, or ``None`` (one chunk per fragment).
        burn_in: warm-up steps per chunk.
        t: decision rows per fragment.
        fragment: what ``t`` is, for the message.

    Raises:
        ValueError: ``chunk_len`` does not divide ``t`` (lists the divisors that would), or ``burn_in``
            leaves no trained step of a fragment (names the key paths).
    """
    if chunk_len is None:
        if burn_in >= t:
            raise ValueError(
                f"trainer.args.burn_in: {burn_in} must be smaller than {fragment} {t} (without "
                f"trainer.args.chunk_len the whole fragment is one chunk, and its first burn_in steps carry no loss)"
            )
        return
    if t % chunk_len != 0:
        raise ValueError(
            f"trainer.args.chunk_len: {chunk_len} does not divide {fragment} {t}; fragments are trained in "
            f"chunks of chunk_len steps, so chunk_len must be one of {_divisors_above(t, burn_in)}"
        )


def check_config(cfg: config.ExperimentConfig) -> None:
    """Check ``trainer.args.chunk_len`` / ``trainer.args.burn_in`` against ``actor.fragment_length``.

    Runs at start-up on every rank, before any component is built; a config without either key passes.

    Raises:
        ConfigError: a bad value (the message starts with the key path and says what was expected).
    """
    args = cfg.single_trainer.args
    if "chunk_len" not in args and "burn_in" not in args:
        return
    try:
        chunk_len, burn_in = check_chunk_args(args.get("chunk_len"), args.get("burn_in", 0))
        check_fragment(chunk_len, burn_in, int(cfg.actor.fragment_length))
    except ValueError as e:
        raise config.ConfigError(str(e)) from None


def split_time(x: torch.Tensor, chunk_len: int) -> torch.Tensor:
    """``(T, B, ...)`` -> ``(chunk_len, (T / chunk_len) * B, ...)``; column ``c * B + b`` is chunk ``c`` of ``b``.

    Examples:
        >>> import torch
        >>> split_time(torch.arange(8).reshape(4, 2), 2)  # x[t, b] = 2 t + b
        tensor([[0, 1, 4, 5],
                [2, 3, 6, 7]])
    """
    t, b = int(x.shape[0]), int(x.shape[1])
    n = t // chunk_len
    return x.reshape(n, chunk_len, b, *x.shape[2:]).transpose(0, 1).reshape(chunk_len, n * b, *x.shape[2:])


def chunk_batch(
    lean: SampleBatch, rows: dict[str, torch.Tensor], t_len: int, chunk_len: int | None, burn_in: int
) -> tuple[SampleBatch, dict[str, torch.Tensor]]:
    """Cut a recurrent trainer batch into chunks (see the module docstring).

    Args:
        lean: what ``analyze`` reads (``obs``, ``action``, ``policy_state``, ``on_reset``), leaves
            ``(T + 1, B, ...)`` or ``(T, B, ...)`` (torch).
        rows: per-decision-row tensors ``(T, B, ...)``; ``rows["mask"]`` is the bool decision mask.
        t_len: ``T``.
        chunk_len: steps per chunk (divides ``T``), or ``None``: one chunk of ``T`` steps.
        burn_in: leading rows of each chunk that get no loss (``mask`` is False there).

    Returns:
        ``(lean, rows)`` with leaves ``(chunk_len, (T / chunk_len) * B, ...)``; the state at each chunk's
        row 0 is the ``policy_state`` stored at that row of the fragment.
    """
    check_fragment(chunk_len, burn_in, t_len, "the batch's fragment length")
    chunk_len = chunk_len or t_len
    out_lean = lean[:t_len].apply(lambda x: split_time(x, chunk_len))
    out = {k: split_time(v, chunk_len) for k, v in rows.items()}
    if burn_in:
        mask = out["mask"].clone()
        mask[:burn_in] = False
        out["mask"] = mask
    return out_lean, out
