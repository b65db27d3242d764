"""`slurm/cluster.sh start` is not refused by a slurmctld that is not its own (other config, other ports)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster

CLUSTER_SH = Path(__file__).resolve().parents[2] / "slurm" / "cluster.sh"


@pytest.fixture
def unrelated_slurmctld(tmp_path):
    """A process named slurmctld that is no SLURM at all: the old check refused to start beside it."""
    fake = tmp_path / "slurmctld"
    shutil.copy(shutil.which("sleep"), fake)
    proc = subprocess.Popen([str(fake), "600"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_start_beside_an_unrelated_slurmctld(_slurm_manager, unrelated_slurmctld):
    stopped = subprocess.run(["bash", str(CLUSTER_SH), "stop"], capture_output=True, text=True, timeout=180)
    assert stopped.returncode == 0, stopped.stderr
    cluster = _slurm_manager.ensure(1)   # starts it again; fails the test with cluster.sh's stderr if refused
    status = subprocess.run(["bash", str(CLUSTER_SH), "status"], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and "running: 1 node" in status.stdout
    assert unrelated_slurmctld.poll() is None   # left alone
    assert cluster.nodes == ("localhost",)
