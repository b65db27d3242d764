"""A whole training run whose run dir is on a real S3-compatible server (SeaweedFS on 127.0.0.1):
checkpoints, status, metrics and TensorBoard land in the bucket, the store going away mid-run does not
stop training or harm saved checkpoints, and the run resumes from the bucket."""
import json
import subprocess
import sys
import threading
import uuid

import pytest

from jobutil import ROOT, env, make_dataset, make_run, wait_for
from orchestrator import storage

pytestmark = [pytest.mark.e2e, pytest.mark.s3]
EXTRA = ["schedule.max_iters=16", "schedule.checkpoint_every_iters=2", "schedule.eval_every_iters=16",
         "data.batch_per_gpu=2"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_dataset(str(tmp_path_factory.mktemp("data")), num_train=16)


def remote_status(run_dir):
    try:
        return json.loads(storage.read_text(storage.join(run_dir, "status.json")))
    except (FileNotFoundError, storage.StorageError, ValueError):
        return {}


def start_training(run_dir, options=None):
    job_env = env()
    if options:  # what `orch submit` hands a job: the config's storage_options, in its environment only
        job_env[storage.SECRETS_ENV] = json.dumps(options)
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                             "-m", "jobs.train", run_dir], cwd=ROOT, env=job_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_run_dir_on_s3_survives_an_outage_and_resumes(s3_server, data_root):
    work_dir = f"s3://{s3_server.bucket}/runs-{uuid.uuid4().hex[:6]}"
    secret_marker = s3_server.secret  # given in the config too: used, never written
    run_dir = make_run(work_dir, "s3run", data_root, extra=EXTRA + [
        f"storage_options={{s3: {{key: {s3_server.key}, secret: {secret_marker}}}}}"])
    # secrets never reach the run dir
    assert secret_marker not in storage.read_text(storage.join(run_dir, "plan.json"))
    assert secret_marker not in storage.read_text(storage.join(run_dir, "config.yml"))
    assert json.loads(storage.read_text(storage.join(run_dir, "plan.json")))["config"]["storage_options"] == \
        {"s3": {"key": "***", "secret": "***"}}

    options = {"s3": {"key": s3_server.key, "secret": s3_server.secret}}
    job = start_training(run_dir, options)
    try:
        wait_for(lambda: job.poll() is not None or remote_status(run_dir).get("iteration", 0) >= 3, 300,
                 "iteration 3 on s3")
        assert job.poll() is None, job.communicate()[0][-3000:]
        lines = []
        reader = threading.Thread(target=lambda: lines.extend(job.stdout), daemon=True)
        reader.start()
        s3_server.stop()                 # the store goes away in the middle of training...
        wait_for(lambda: any("retrying" in l or "could not write progress" in l for l in lines), 300,
                 "the job to notice the outage")
        at_outage = len(lines)
        s3_server.start()                # ...and comes back
        job.wait(timeout=600)
        reader.join(timeout=30)
        out = "".join(lines)
        assert any("Epoch" in l for l in lines[at_outage:]), "training did not go on after the outage"
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, out[-4000:]
    # the outage was felt (a retried upload or an unwritable status) and training went on
    status = remote_status(run_dir)
    assert status["state"] == "COMPLETED" and status["iteration"] == 16, out[-3000:]
    names = storage.listdir(storage.join(run_dir, "checkpoints"))
    assert "final.pth.done" in names and "iter_000000016.pth.done" in names
    assert any(n.startswith("events.out.tfevents") for n in storage.listdir(storage.join(run_dir, "tb")))
    assert '"type": "train"' in storage.read_text(storage.join(run_dir, "metrics.jsonl"))

    # `orch status` reads the run back from the bucket
    result = subprocess.run([sys.executable, "-m", "orchestrator.cli", "status", run_dir, "--json"], cwd=ROOT,
                            env=env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["latest_checkpoint"].endswith("iter_000000016.pth")

    # starting it again resumes from the bucket's final checkpoint instead of training from scratch
    again = start_training(run_dir, options)
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out[-3000:]
    assert "resumed from s3://" in out and "at iteration 16/16" in out
