"""A job that fails for a real error ends promptly, says why, and is not mistaken for a preemption."""
import subprocess
import sys

import pytest

from jobutil import ROOT, env, make_dataset, make_run, read_status

pytestmark = pytest.mark.e2e

RAISE_AT_3 = """
import sys, jobs.engine as engine
after_step = engine.Trainer.after_step
def failing(self, *args, **kwargs):
    if self.iteration == 3:
        raise RuntimeError('injected failure at iteration 3')
    return after_step(self, *args, **kwargs)
engine.Trainer.after_step = failing
from jobs.train import main
sys.exit(main([sys.argv[1]]))
"""


def test_an_exception_with_live_loader_workers_ends_the_process(tmp_path):
    """Loader workers ignore SIGTERM (so SLURM's signals reach only the trainer); an exception must
    still end the process instead of waiting for them forever at interpreter exit."""
    data_root = make_dataset(str(tmp_path / "data"), num_train=16)
    run_dir = make_run(str(tmp_path / "runs"), "fails", data_root, gpus=1,
                       extra=["schedule.max_iters=8", "data.batch_per_gpu=2", "data.num_workers=2"])
    result = subprocess.run([sys.executable, "-c", RAISE_AT_3, run_dir], cwd=ROOT, env=env(),
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 1
    assert "injected failure at iteration 3" in result.stdout + result.stderr
    status = read_status(run_dir)
    assert status["state"] == "FAILED" and "injected failure" in status["error"]
