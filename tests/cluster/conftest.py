"""Fixtures for tests against the real local SLURM cluster of slurm/cluster.sh.

`slurm_cluster` (one node) and `slurm_cluster_2nodes` (n1, n2 in network namespaces) are
session-scoped: the cluster starts once and is shared. Only one mode can run at a time, so
tests using `slurm_cluster_2nodes` are moved to the end of the session, and before each cluster
test the mode it asked for is made current (a no-op unless modes alternate). At session end
the machine is left as found: stopped if it was stopped, else back in the mode it was in.

Skipped only when not root or when the SLURM/munge binaries are missing (slurm/install.sh).
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SH = REPO / "slurm" / "cluster.sh"
STATE_DIR = os.environ.get("ORCH_SLURM_DIR", "/tmp/orch-slurm")
REQUIRED_BINARIES = ("slurmctld", "slurmd", "munged", "sbatch", "srun", "scontrol", "squeue",
                     "scancel", "sinfo", "ip", "nsenter", "unshare")
START_TIMEOUT_S = 180


@dataclasses.dataclass(frozen=True)
class SlurmCluster:
    """What a test may rely on; sbatch/squeue also work without SLURM_CONF (/etc/slurm)."""

    nodes: tuple[str, ...]
    partition: str
    gpus_per_node: int
    slurm_conf: str
    state_dir: str


CLUSTERS = {
    1: SlurmCluster(("localhost",), "dev", 4, f"{STATE_DIR}/slurm.conf", STATE_DIR),
    2: SlurmCluster(("n1", "n2"), "dev", 2, f"{STATE_DIR}/slurm.conf", STATE_DIR),
}


def _cluster_sh(*args: str, timeout_s: float = START_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(CLUSTER_SH), *args], capture_output=True, text=True,
                          timeout=timeout_s)


def _running_mode() -> int | None:
    result = _cluster_sh("status", timeout_s=60)
    match = re.search(r"running: (\d) node", result.stdout)
    return int(match.group(1)) if result.returncode == 0 and match else None


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the local SLURM cluster needs root (daemons, /etc/slurm, network namespaces)"
    search_path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"   # as cluster.sh does
    missing = [name for name in REQUIRED_BINARIES if shutil.which(name, path=search_path) is None]
    if missing:
        return f"SLURM/munge binaries missing: {', '.join(missing)}; run slurm/install.sh"
    return None


class ClusterManager:
    """Starts the mode a test needs; at the end puts back the mode found at session start."""

    def __init__(self) -> None:
        self.found_mode = _running_mode()
        self.current_mode = self.found_mode
        self._patch = pytest.MonkeyPatch()

    def ensure(self, nodes: int) -> SlurmCluster:
        if self.current_mode != nodes or _running_mode() != nodes:
            self._start(nodes)
        self._patch.setenv("SLURM_CONF", CLUSTERS[nodes].slurm_conf)
        return CLUSTERS[nodes]

    def _start(self, nodes: int) -> None:
        result = _cluster_sh("start", "--nodes", str(nodes))
        if result.returncode != 0:
            pytest.fail(f"slurm/cluster.sh start --nodes {nodes} failed "
                        f"(rc {result.returncode}):\n{result.stdout}\n{result.stderr}",
                        pytrace=False)
        self.current_mode = nodes

    def restore(self) -> None:
        self._patch.undo()
        if self.current_mode == self.found_mode:
            return
        if self.found_mode is None:
            result = _cluster_sh("stop")
        else:
            result = _cluster_sh("start", "--nodes", str(self.found_mode))
        if result.returncode != 0:
            raise RuntimeError(f"restoring the SLURM cluster failed:\n{result.stderr}")


@pytest.fixture(scope="session")
def _slurm_manager():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    manager = ClusterManager()
    try:
        yield manager
    finally:
        manager.restore()


@pytest.fixture(scope="session")
def slurm_cluster(_slurm_manager) -> SlurmCluster:
    """The one-node cluster: node `localhost`, partition dev (default) and debug, 4 fake GPUs."""
    return _slurm_manager.ensure(1)


@pytest.fixture(scope="session")
def slurm_cluster_2nodes(_slurm_manager) -> SlurmCluster:
    """Two nodes `n1`, `n2` (own hostname and address each), partition dev, 2 fake GPUs each."""
    return _slurm_manager.ensure(2)


@pytest.fixture(autouse=True)
def _slurm_mode_for_test(request):
    """Re-assert the mode a cluster test asked for: session fixtures are cached, the mode not."""
    for nodes, name in ((2, "slurm_cluster_2nodes"), (1, "slurm_cluster")):
        if name in request.fixturenames:
            request.getfixturevalue("_slurm_manager").ensure(nodes)
            break


def pytest_collection_modifyitems(config, items):
    """Run two-node tests after all others so the cluster switches mode at most once."""
    items.sort(key=lambda item: "slurm_cluster_2nodes" in getattr(item, "fixturenames", ()))


# --- tiny training data and a work dir shared by the tests of one module --------------------------
@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from jobutil import make_dataset
    return make_dataset(str(tmp_path_factory.mktemp("data")), num_train=32)


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("runs"))
