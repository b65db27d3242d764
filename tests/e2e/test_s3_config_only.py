"""A run whose run dir is on an S3 server that only the config's ``storage_options`` reach (an
on-prem endpoint with its own keys, the README's example): no AWS_* anywhere. `orch submit
--executor local` hands the options to the job in its environment; the launcher and the job read
plan.json with them; the secret is written nowhere; `orch status` of the bucket URL works with the
options in ``$ORCH_STORAGE_OPTIONS`` and says clearly what is wrong without them."""
import json
import os
import re
import subprocess
import sys
import uuid

import pytest

from jobutil import ROOT, TINY, data_overrides, env, make_dataset, wait_for
from orchestrator import storage
from orchestrator.storage import SECRETS_ENV, StorageOptions

pytestmark = [pytest.mark.e2e, pytest.mark.s3]
CONFIG = os.path.join(ROOT, "configs", "demo.yml")
PLAN = ["schedule.max_iters=4", "schedule.checkpoint_every_iters=2", "schedule.eval_every_iters=100",
        "data.batch_per_gpu=2"]


def orch(*args, options=None, timeout=120):
    """The CLI in its own process, with this test's environment (no AWS_*), plus the options in
    $ORCH_STORAGE_OPTIONS when given."""
    cli_env = env()
    if options is not None:
        cli_env[SECRETS_ENV] = json.dumps(options)
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=ROOT, env=cli_env,
                          capture_output=True, text=True, timeout=timeout)


def remote_json(url):
    try:
        return json.loads(storage.read_text(url))
    except (FileNotFoundError, storage.StorageError, ValueError):
        return {}


def test_a_run_reaches_its_bucket_only_through_the_configs_storage_options(s3_server, s3_options_only, tmp_path,
                                                                            monkeypatch):
    options = s3_options_only
    assert not any(name.startswith("AWS_") and name not in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
                                                             "AWS_CA_BUNDLE", "AWS_MAX_ATTEMPTS")
                   for name in env())
    monkeypatch.setenv("ORCH_LOG_ROOT", str(tmp_path / "logs"))
    data_root = make_dataset(str(tmp_path / "data"), num_train=8)
    work_dir = f"s3://{s3_server.bucket}/cfgonly-{uuid.uuid4().hex[:6]}"
    submitted = orch("submit", CONFIG, "--executor", "local", "--gpus", "1", "--name", "r", *TINY,
                     *data_overrides(data_root), *PLAN, f"work_dir={work_dir}",
                     "storage_options=" + json.dumps(options))
    assert submitted.returncode == 0, submitted.stderr
    run_dir = f"{work_dir}/r"

    job_pid = int(re.search(r"as local job (\d+)", submitted.stdout).group(1))
    storage.use(StorageOptions.parse(options))   # this test reads the bucket back the same way
    status_url = storage.join(run_dir, "status.json")
    wait_for(lambda: not os.path.exists(f"/proc/{job_pid}"), 600, "the local job to end")
    done = remote_json(status_url)
    logs = "".join(open(os.path.join(tmp_path, "logs", "r", name), errors="replace").read()
                   for name in os.listdir(tmp_path / "logs" / "r") if name.endswith(".out"))
    assert done.get("state") == "COMPLETED" and done.get("iteration") == 4, logs[-3000:]
    names = storage.listdir(storage.join(run_dir, "checkpoints"))
    assert "final.pth.done" in names and "iter_000000004.pth.done" in names
    node = json.loads(storage.read_text(storage.join(run_dir, "nodes", "node-0.json")))
    assert node["state"] == "EXITED" and node["exit_code"] == 0   # the launcher, too, reached the bucket

    # the secret went to the job's environment only: no file of the run dir or the logs holds it
    secret = options["s3"]["secret"]
    fs, root = storage.filesystem(run_dir)
    for path in fs.find(root):
        assert secret.encode() not in fs.cat_file(path), path
    assert secret not in logs
    assert json.loads(storage.read_text(storage.join(run_dir, "plan.json")))["config"]["storage_options"] == \
        {"s3": {"endpoint_url": options["s3"]["endpoint_url"], "key": "***", "secret": "***"}}

    # an existing run on the bucket: the user gives the options in $ORCH_STORAGE_OPTIONS
    status = orch("status", run_dir, "--json", options=options)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["state"] == "COMPLETED"
    # without them there is no route: one clear line, no traceback
    lost = orch("status", run_dir, "--json")
    assert lost.returncode == 2 and "Traceback" not in lost.stderr and run_dir in lost.stderr, lost.stderr
