"""The one enum of MPI message tags used by hpcrl (no tag number appears anywhere else).

Tag ranges (MPI guarantees tags up to 32767):

* ``1-99``: control plane: small JSON objects (:mod:`hpcrl.comm.control`).
* ``100-999``: data plane: one contiguous buffer per message (:mod:`hpcrl.comm.channel`,
  :mod:`hpcrl.comm.params`). ``200-299``, ``300-399``, ``400-499``: the parameters, the rollout requests and
  the rollout results of policy ``i`` of a multi-policy run (:func:`policy_params_tag`,
  :func:`policy_request_tag`, :func:`policy_result_tag`). ``900-999`` are free for tests and benchmarks.
* ``1100-1999``: schema handshakes. Every data tag ``T`` has its handshake on ``schema_tag(T) = T + 1000``,
  so two channels between the same pair of ranks never mix up their schemas.

To add a tag: pick a free number in the right range, document it here, and for a data tag also add
its ``*_SCHEMA`` companion (the module checks at import that every data tag has one).

Examples:
    >>> Tag.SAMPLE, int(Tag.SAMPLE), schema_tag(Tag.SAMPLE) == Tag.SAMPLE_SCHEMA
    (<Tag.SAMPLE: 102>, 102, True)
    >>> tag_name(Tag.REQUEST), tag_name(950)
    ('REQUEST (100)', '950')
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "Tag",
    "SCHEMA_OFFSET",
    "DATA_TAGS",
    "schema_tag",
    "tag_name",
    "is_data_tag",
    "policy_params_tag",
    "policy_request_tag",
    "policy_result_tag",
]

#: Distance between a data tag and its schema-handshake tag.
SCHEMA_OFFSET = 1000

#: Data-plane tags are in ``[DATA_TAGS.start, DATA_TAGS.stop)``.
DATA_TAGS = range(100, 1000)


class Tag(IntEnum):
    """Every MPI tag hpcrl sends on."""

    # ------------------------------------------------------------ control plane (JSON objects, <= 64 KiB)
    CONTROL = 1
    """Run control: stop, stop requests, frame budgets, checkpoint requests (JSON dicts, any rank to any rank)."""
    STATS = 2
    """Statistics reports from actor/inference ranks to the trainer leader (JSON dicts)."""
    HEARTBEAT = 3
    """Liveness beacons to the trainer leader (JSON dicts)."""

    # ------------------------------------------------------------ data plane (buffers)
    REQUEST = 100
    """Actor -> inference: a ``RolloutRequest`` batch."""
    RESULT = 101
    """Inference -> actor: the matching ``RolloutResult`` batch."""
    SAMPLE = 102
    """Actor -> trainer: a ``SampleBatch`` fragment of shape ``(T + 1, B)``."""
    PARAMS = 103
    """Trainer leader -> inference ranks (or inline actors): flattened parameters with their version."""
    TEST = 900
    """Tests and benchmarks (900-999 are all free for them)."""

    # ------------------------------------------------------------ schema handshakes (JSON as uint8 buffers)
    REQUEST_SCHEMA = 1100
    """Schema handshake of :attr:`REQUEST`."""
    RESULT_SCHEMA = 1101
    """Schema handshake of :attr:`RESULT`."""
    SAMPLE_SCHEMA = 1102
    """Schema handshake of :attr:`SAMPLE`."""
    PARAMS_SCHEMA = 1103
    """Schema handshake of :attr:`PARAMS`."""
    TEST_SCHEMA = 1900
    """Schema handshake of :attr:`TEST`."""


#: The parameters of policy ``i`` (in ``policies`` order) of a multi-policy MPI run go on tag ``POLICY_PARAMS + i``.
POLICY_PARAMS = 200
#: Actor -> inference: the rollout requests of policy ``i`` go on tag ``POLICY_REQUEST + i``.
POLICY_REQUEST = 300
#: Inference -> actor: the rollout results of policy ``i`` go on tag ``POLICY_RESULT + i``.
POLICY_RESULT = 400
#: At most this many policies per multi-policy MPI run (one tag of each kind each).
MAX_POLICIES = 100


def _policy_tag(base: int, index: int) -> int:
    if not 0 <= index < MAX_POLICIES:
        raise ValueError(f"policy index {index}: a multi-policy MPI run has at most {MAX_POLICIES} policies")
    return base + index


def policy_params_tag(index: int) -> int:
    """The data tag of the parameters of policy number ``index`` of a multi-policy run.

    >>> policy_params_tag(0), policy_params_tag(3)
    (200, 203)

    Raises:
        ValueError: ``index`` is outside ``[0, MAX_POLICIES)``.
    """
    return _policy_tag(POLICY_PARAMS, index)


def policy_request_tag(index: int) -> int:
    """The data tag of the rollout requests of policy number ``index`` (actor -> inference rank).

    >>> policy_request_tag(0), schema_tag(policy_request_tag(2))
    (300, 1302)

    Raises:
        ValueError: ``index`` is outside ``[0, MAX_POLICIES)``.
    """
    return _policy_tag(POLICY_REQUEST, index)


def policy_result_tag(index: int) -> int:
    """The data tag of the rollout results of policy number ``index`` (inference rank -> actor).

    >>> policy_result_tag(1)
    401

    Raises:
        ValueError: ``index`` is outside ``[0, MAX_POLICIES)``.
    """
    return _policy_tag(POLICY_RESULT, index)


def is_data_tag(tag: int) -> bool:
    """Whether ``tag`` is in the data-plane range (it then has a schema handshake tag)."""
    return int(tag) in DATA_TAGS


def schema_tag(tag: int) -> int:
    """The schema-handshake tag of data tag ``tag``.

    Args:
        tag: a data-plane tag (``100 <= tag < 1000``).

    Returns:
        ``tag + SCHEMA_OFFSET`` (a :class:`Tag` member when one exists).

    Raises:
        ValueError: ``tag`` is not a data-plane tag.
    """
    if not is_data_tag(tag):
        raise ValueError(
            f"tag {tag_name(tag)} is not a data-plane tag: channels need a tag in "
            f"[{DATA_TAGS.start}, {DATA_TAGS.stop}) (see hpcrl.comm.tags)"
        )
    value = int(tag) + SCHEMA_OFFSET
    try:
        return Tag(value)
    except ValueError:
        return value


def tag_name(tag: int) -> str:
    """Readable name of a tag for error messages, e.g. ``'SAMPLE (102)'``; plain number if unnamed."""
    try:
        return f"{Tag(int(tag)).name} ({int(tag)})"
    except ValueError:
        return str(int(tag))


def _check_companions() -> None:
    for member in Tag:
        if is_data_tag(member):
            companion = Tag.__members__.get(f"{member.name}_SCHEMA")
            if companion is None or companion != member + SCHEMA_OFFSET:
                raise RuntimeError(
                    f"hpcrl.comm.tags: data tag {member.name} needs {member.name}_SCHEMA = {member + SCHEMA_OFFSET}"
                )


_check_companions()
