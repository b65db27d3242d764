"""slurm/cluster.sh refuses to start only on a real clash (its ports), not on any slurmctld.

The script's functions are sourced (no root, no daemons); ports are free ones picked here, so
a SLURM cluster already running on this machine does not matter.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_clashes(mode: int, ctld_port: int, slurmd_port: int) -> subprocess.CompletedProcess:
    script = (f"source slurm/cluster.sh; SLURMCTLD_PORT={ctld_port}; SLURMD_PORT={slurmd_port}; "
              f"check_clashes {mode} && echo no-clash")
    return subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.fixture
def unrelated_slurmctld(tmp_path):
    """A process named slurmctld (what `pgrep -x slurmctld` saw) that is not this cluster's."""
    fake = tmp_path / "slurmctld"
    shutil.copy(shutil.which("sleep"), fake)
    proc = subprocess.Popen([str(fake), "120"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_another_slurmctld_on_other_ports_is_no_clash(unrelated_slurmctld):
    assert subprocess.run(["pgrep", "-x", "slurmctld"], capture_output=True, text=True).stdout.strip()
    done = check_clashes(1, free_port(), free_port())
    assert done.returncode == 0 and done.stdout == "no-clash\n", done.stderr


@pytest.mark.parametrize("mode,taken,refused", [(1, "slurmctld", True), (1, "slurmd", True),
                                                (2, "slurmctld", True), (2, "slurmd", False)])
def test_a_port_in_use_is_refused_naming_port_and_owner(mode, taken, refused):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        busy = listener.getsockname()[1]
        ports = (busy, free_port()) if taken == "slurmctld" else (free_port(), busy)
        done = check_clashes(mode, *ports)
    if not refused:  # two-node slurmds listen in their own network namespaces
        assert done.returncode == 0 and done.stdout == "no-clash\n", done.stderr
        return
    assert done.returncode == 1 and done.stdout == ""
    assert f"port {busy}, which this cluster's {taken} needs, is already in use" in done.stderr
    assert f"pid {os.getpid()} (" in done.stderr and "ORCH_SLURMCTLD_PORT" in done.stderr
