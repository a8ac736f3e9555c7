"""Malformed messages on the data plane of a running job (case 11 of docs/reliability.md).

The actor rank's env, from inside the job, sends a message of its own to trainer rank 0 on the SAMPLE tag:
either 256 random bytes, or a well-formed header that claims 2**40 rows (with the right schema id and
sequence number, so only the size check can refuse it). The channel-level tests are in tests/mpi/test_channel.py.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from faultkit import fault_env, job_processes, log_lines, run_job, wait_until

CASES = {
    "garbage_msg": "bad magic number",
    "forged_header": "1099511627776 rows (batch shape (1099511627776, 1)) exceed max_rows=",
}


@pytest.mark.parametrize("fault", list(CASES))
def test_malformed_sample_message_names_source_rank_and_tag(
    tmp_path: Path, clean_env: dict[str, str], fault: str
) -> None:
    run_dir = tmp_path / "run"
    res = run_job(
        fault_env(clean_env),
        run_dir,
        "experiment.total_frames=100000000",
        f"environment.args={{fault: {fault}, at_step: 100, ranks: [1]}}",
        ranks=2,
        timeout=90,
        expect_fatal=True,
    )
    assert res.rc != 0, res.explain()
    fatal = log_lines(res.text, "FATAL:")
    assert fatal and fatal[0].startswith(f"[rank 0 trainer {socket.gethostname()}] FATAL: ChannelError:"), res.explain()
    assert "channel 'samples of actor 1' (rank 1 -> rank 0, tag SAMPLE (102))" in fatal[0], fatal[0]
    assert CASES[fault] in fatal[0], fatal[0]
    wait_until(lambda: not job_processes(run_dir), 10, "every process of the job to be gone", poll=0.2)
    print(f"{fault}: rc={res.rc} after {res.seconds:.1f}s: {fatal[0].split('ChannelError: ')[-1][:200]}")
