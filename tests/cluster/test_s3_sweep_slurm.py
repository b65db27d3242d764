"""`orch sweep` on the real SLURM cluster with its sweep dir on an S3 server that only the config's
``storage_options`` reach (endpoint, key, secret): no AWS_* in the environment of the CLI, of
sbatch or of the jobs.

A 2-point sweep at most 1 running: task 0 runs and completes on the bucket (the array got the
options as `orch submit` hands them); task 1 is cancelled while pending. Later, from a shell that
gives the options in ``$ORCH_STORAGE_OPTIONS``, `orch sweep status` reads the sweep and `orch sweep
resume` runs task 1 to completion (its job handed the options, never a redacted ``***``). The
secret is in no file of the bucket, nor in the logs or the sbatch script.
"""
import glob
import json
import os
import subprocess
import sys
import uuid

import pytest

from jobutil import ROOT, TINY, data_overrides, env
from orchestrator import storage
from orchestrator.storage import SECRETS_ENV, StorageOptions
from slurmutil import wait_for_job

pytestmark = [pytest.mark.cluster, pytest.mark.s3]
CONFIG = os.path.join(ROOT, "configs", "demo.yml")
PLAN = ["schedule.max_iters=4", "schedule.checkpoint_every_iters=2", "schedule.eval_every_iters=100",
        "data.batch_per_gpu=2", "resources.time=00:20:00"]


def orch(*args, options=None, timeout=180):
    cli_env = env()
    cli_env["OMP_NUM_THREADS"] = "1"
    if options is not None:
        cli_env[SECRETS_ENV] = json.dumps(options)
    result = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=ROOT, env=cli_env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return result.stdout


def logs(log_dir, job_id):
    return "".join(open(p, errors="replace").read() for p in sorted(glob.glob(os.path.join(log_dir, f"{job_id}_*.out"))))


def test_a_sweep_on_s3_reached_only_through_the_configs_storage_options(slurm_cluster, s3_server, s3_options_only,
                                                                        data_root, tmp_path, monkeypatch):
    options = s3_options_only
    secret = options["s3"]["secret"]
    monkeypatch.setenv("ORCH_LOG_ROOT", str(tmp_path / "logs"))
    monkeypatch.setenv("ORCH_CACHE_DIR", str(tmp_path / "cache"))
    work_dir = f"s3://{s3_server.bucket}/sweeps-{uuid.uuid4().hex[:6]}"
    tiny = [o for o in TINY if not o.startswith("optimizer.base_lr=")]   # swept here
    out = orch("sweep", CONFIG, "-p", "optimizer.base_lr=0.01,0.02", "--max-parallel", "1", "--name", "s3sw",
               "--executor", "slurm", "--partition", "dev", "--gpus", "1", "--cpus-per-gpu", "1", *tiny,
               *data_overrides(data_root), f"work_dir={work_dir}", *PLAN, "storage_options=" + json.dumps(options))
    sweep_dir = f"{work_dir}/s3sw"
    log_dir = str(tmp_path / "logs" / "s3sw")
    storage.use(StorageOptions.parse(options))   # this test reads the bucket back the same way
    array_id = json.loads(storage.read_text(f"{sweep_dir}/sweep.json"))["array_job_ids"][0]
    arrays = [array_id]
    try:
        subprocess.run(["scancel", f"{array_id}_1"], check=True)   # pending behind %1
        fields = wait_for_job(f"{array_id}_0", timeout_s=600)
        assert fields["JobState"] == "COMPLETED", logs(log_dir, f"{array_id}_0")[-3000:]
        assert json.loads(storage.read_text(f"{sweep_dir}/p000/status.json"))["iteration"] == 4

        # a later shell: the user gives the options in $ORCH_STORAGE_OPTIONS (the README's way)
        status = json.loads(orch("sweep", "status", sweep_dir, "--json", options=options))
        assert {r["point"]: r["state"] for r in status["points"]} == {"p000": "COMPLETED", "p001": "CANCELLED"}
        out = orch("sweep", "resume", sweep_dir, options=options)
        assert "1 point(s)" in out and "p001 (CANCELLED)" in out
        resumed = json.loads(storage.read_text(f"{sweep_dir}/sweep.json"))["array_job_ids"][1]
        arrays.append(resumed)
        fields = wait_for_job(f"{resumed}_1", timeout_s=600)
        assert fields["JobState"] == "COMPLETED", logs(log_dir, f"{resumed}_1")[-3000:]
        status = json.loads(orch("sweep", "status", sweep_dir, "--json", options=options))
        assert [r["state"] for r in status["points"]] == ["COMPLETED", "COMPLETED"]
        assert all(r["iteration"] == 4 for r in status["points"])
    finally:
        for array in arrays:
            subprocess.run(["scancel", array], capture_output=True)

    # the secret went to the jobs' environment only
    fs, root = storage.filesystem(sweep_dir)
    for path in fs.find(root):
        assert secret.encode() not in fs.cat_file(path), path
    for path in glob.glob(os.path.join(log_dir, "*")):
        assert secret not in open(path, errors="replace").read(), path
