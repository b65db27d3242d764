"""Storage options are one explicit value: built at each entry point, applied before the first read,
handed to jobs in their environment (never a file), and never a redacted ``***`` given to fsspec.

The S3 end-to-end proofs (a run and a sweep reaching the server only through the config's
storage_options) are tests/e2e/test_s3_run.py and tests/cluster/test_s3_sweep_slurm.py.
"""
import json
import os
import signal
import sys

import pytest

from jobs import entry
from orchestrator import cli, runs, storage
from orchestrator.errors import OrchError
from orchestrator.executors import Submitted
from orchestrator.executors.slurm import SlurmExecutor
from orchestrator.storage import SECRETS_ENV, StorageOptions

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "demo.yml")
ENDPOINT = "http://127.0.0.1:9"   # nothing listens: a test that reached it would fail loudly
SECRET = "s3cr3t-never-written"
CONFIG_OPTIONS = {"s3": {"endpoint_url": ENDPOINT, "key": "AKIATEST", "secret": SECRET}}


# ---------------------------------------------------------------- the value

def test_flat_options_are_s3_and_redacted_values_are_dropped():
    options = StorageOptions.parse({"endpoint_url": ENDPOINT, "key": "***", "secret": "***"})
    assert options.by_protocol == {"s3": {"endpoint_url": ENDPOINT}}
    nested = StorageOptions.parse({"s3": {"key": "***", "client_kwargs": {"region_name": "x", "token": "***"}}})
    assert nested.by_protocol == {"s3": {"client_kwargs": {"region_name": "x"}}}


def test_merged_puts_the_second_on_top_key_by_key():
    saved = StorageOptions.parse({"s3": {"endpoint_url": ENDPOINT, "key": "***"}, "gs": {"project": "p"}})
    user = StorageOptions.parse({"s3": {"key": "K", "secret": "S"}})
    assert saved.merged(user).by_protocol == {"s3": {"endpoint_url": ENDPOINT, "key": "K", "secret": "S"},
                                              "gs": {"project": "p"}}


def test_repr_shows_no_secret():
    assert SECRET not in repr(StorageOptions.parse(CONFIG_OPTIONS))


def test_a_bad_environment_value_is_one_clear_error_without_the_value(monkeypatch, capsys):
    monkeypatch.setenv(SECRETS_ENV, '{"s3": {"secret": "' + SECRET + '"')
    with pytest.raises(OrchError, match=r"\$ORCH_STORAGE_OPTIONS is not valid JSON") as caught:
        StorageOptions.from_env()
    assert SECRET not in str(caught.value)
    assert cli.main(["runs", "--work-dir", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert "ORCH_STORAGE_OPTIONS is not valid JSON" in err and SECRET not in err and "Traceback" not in err


def test_a_missing_s3fs_names_the_extra_before_any_work(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "s3fs", None)   # as if not installed
    with pytest.raises(OrchError, match=r"s3://bucket/run needs the s3fs package, which is not installed: "
                                        r"pip install 'orch\[s3\]'"):
        storage.exists("s3://bucket/run")
    assert cli.main(["status", "s3://bucket/run"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'orch[s3]'" in err and "internal error" not in err


# ---------------------------------------------------------------- the job side: options first

def test_a_job_applies_the_handed_over_options_before_reading_the_plan(tmp_path, monkeypatch):
    """The options in effect at the job's very first read (plan.json) are the handed-over ones."""
    run_dir = str(tmp_path / "run")
    runs.write_json(os.path.join(run_dir, runs.PLAN_FILE), {"run_name": "r", "config": {}, "plan": {}})
    seen = []
    real = storage.filesystem

    def filesystem(url):
        seen.append((url, storage.active().for_protocol("s3")))
        return real(url)

    monkeypatch.setattr(storage, "filesystem", filesystem)
    monkeypatch.setenv(SECRETS_ENV, json.dumps(CONFIG_OPTIONS))
    doc = entry.open_run(run_dir)
    assert doc["run_name"] == "r"
    first_url, options_at_first_read = seen[0]
    assert first_url.endswith("plan.json") and options_at_first_read == CONFIG_OPTIONS["s3"]
    assert storage.active().for_protocol("s3") == CONFIG_OPTIONS["s3"]


def test_a_job_started_by_hand_uses_the_plans_options_without_the_redacted_secrets(tmp_path, monkeypatch):
    run_dir = str(tmp_path / "run")
    saved = {"s3": {"endpoint_url": ENDPOINT, "key": "***", "secret": "***"}}
    runs.write_json(os.path.join(run_dir, runs.PLAN_FILE),
                    {"run_name": "r", "config": {"storage_options": saved}, "plan": {}})
    monkeypatch.delenv(SECRETS_ENV, raising=False)
    entry.open_run(run_dir)
    assert storage.active().for_protocol("s3") == {"endpoint_url": ENDPOINT}
    fs, _ = storage.filesystem("s3://bucket/x")
    assert "***" not in json.dumps(fs.storage_options)


@pytest.fixture
def restored_signals():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.s3
def test_the_launcher_reaches_a_bucket_only_through_the_handed_over_options(s3_server, monkeypatch,
                                                                           restored_signals):
    """No AWS_* in the environment: the launcher reads plan.json and writes its node record on the
    bucket with the options `orch submit` handed it, and with nothing else."""
    from jobs import launch

    options = {"s3": {"endpoint_url": s3_server.endpoint_url, "key": s3_server.key, "secret": s3_server.secret}}
    run_dir = s3_server.url("handed", os.urandom(4).hex())
    storage.use(StorageOptions.parse(options))
    runs.write_json(storage.join(run_dir, runs.PLAN_FILE), {
        "run_name": "handed", "run_dir": run_dir,
        "plan": {"gpus_per_node": 1}, "config": {"resources": {"max_requeues": 0}, "storage_options": {
            "s3": {"endpoint_url": s3_server.endpoint_url, "key": "***", "secret": "***"}}}})
    storage.use(StorageOptions())
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv(SECRETS_ENV, json.dumps(options))
    monkeypatch.setattr(launch, "torchrun_command", lambda *args: [sys.executable, "-c", "pass"])
    assert launch.run_node(run_dir) == "COMPLETED"   # read the plan on the bucket, ran "torchrun", which exited 0
    record = runs.read_json(storage.join(run_dir, "nodes", "node-0.json"))
    assert record["state"] == "EXITED" and record["exit_code"] == 0


# ---------------------------------------------------------------- the CLI side: hand over, never ***

class RecordingSlurm:
    """sbatch stand-in that records what each submission hands the job in its environment."""

    def __init__(self, monkeypatch):
        self.handed: list[str | None] = []
        self.arrays = 0
        monkeypatch.setattr(SlurmExecutor, "submit", lambda _, req: self._submit(req, "7"))
        monkeypatch.setattr(SlurmExecutor, "submit_array",
                            lambda _, req, task_ids, fmt: self._submit(req, str(100 + self._next_array())))
        monkeypatch.setattr(SlurmExecutor, "release", lambda _, job_id: None)
        monkeypatch.setattr(SlurmExecutor, "status", lambda _, job_id: {"state": "FAILED", "restarts": 0})
        monkeypatch.setattr(SlurmExecutor, "array_status", lambda _, array_id: {})  # every task gone

    def _next_array(self) -> int:
        self.arrays += 1
        return self.arrays - 1

    def _submit(self, req, job_id):
        self.handed.append(os.environ.get(SECRETS_ENV))
        return Submitted(job_id=job_id, executor="slurm", log_dir=req.log_dir)

    def last(self) -> dict:
        assert self.handed[-1] is not None, "the job was handed no storage options"
        return json.loads(self.handed[-1])


@pytest.fixture
def tiny_data(tmp_path):
    from orchestrator.synth import make_synthetic_dataset
    make_synthetic_dataset(str(tmp_path / "data"), num_train=8, num_val=2, image_size=64, seed=0)
    return str(tmp_path / "data")


def base_args(tiny_data, work_dir):
    return ["--executor", "slurm", "--partition", "dev", "--gpus", "2", f"work_dir={work_dir}",
            f"data.train.ann_file={tiny_data}/train.json", f"data.val.ann_file={tiny_data}/val.json",
            "schedule.epochs=2", "storage_options=" + json.dumps(CONFIG_OPTIONS)]


def assert_no_redacted_reaches_fsspec():
    assert "***" not in storage.active().to_json()
    fs, _ = storage.filesystem("s3://bucket/x")
    assert "***" not in json.dumps(fs.storage_options)


def test_sweep_hands_the_config_options_to_the_array_and_resume_never_passes_redacted_values(
        tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ORCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(SECRETS_ENV, raising=False)
    fake = RecordingSlurm(monkeypatch)
    work_dir = tmp_path / "runs"
    code = cli.main(["sweep", CONFIG, "--name", "s", "-p", "optimizer.base_lr=0.01,0.02",
                     *base_args(tiny_data, work_dir)])
    assert code == 0, capsys.readouterr().err
    assert fake.last() == CONFIG_OPTIONS                       # as `orch submit` hands them: real values
    assert os.environ.get(SECRETS_ENV) is None                 # ...to the job only, not left in this process
    plan_text = open(work_dir / "s" / "p000" / "plan.json").read()
    assert SECRET not in plan_text and '"secret": "***"' in plan_text

    # a later shell without the secrets: the saved endpoint is handed on, a *** never is
    storage.use(StorageOptions())
    assert cli.main(["sweep", "resume", str(work_dir / "s")]) == 0, capsys.readouterr().err
    assert fake.last() == {"s3": {"endpoint_url": ENDPOINT}}
    assert_no_redacted_reaches_fsspec()

    # the user supplies the secrets the way the README says: $ORCH_STORAGE_OPTIONS
    monkeypatch.setenv(SECRETS_ENV, json.dumps({"s3": {"key": "AKIATEST", "secret": SECRET}}))
    assert cli.main(["sweep", "resume", str(work_dir / "s")]) == 0, capsys.readouterr().err
    assert fake.last() == CONFIG_OPTIONS
    assert_no_redacted_reaches_fsspec()


def test_submit_and_resume_hand_over_the_options_and_never_redacted_values(tiny_data, tmp_path, monkeypatch,
                                                                          capsys):
    monkeypatch.setenv("ORCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(SECRETS_ENV, raising=False)
    fake = RecordingSlurm(monkeypatch)
    work_dir = tmp_path / "runs"
    assert cli.main(["submit", CONFIG, "--name", "one", *base_args(tiny_data, work_dir)]) == 0, \
        capsys.readouterr().err
    assert fake.last() == CONFIG_OPTIONS
    storage.use(StorageOptions())
    assert cli.main(["resume", str(work_dir / "one")]) == 0, capsys.readouterr().err
    assert fake.last() == {"s3": {"endpoint_url": ENDPOINT}}
    assert_no_redacted_reaches_fsspec()
