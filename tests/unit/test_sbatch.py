"""The one sbatch script writer: golden files, what sbatch's #SBATCH parser reads back, what bash hands
to srun (a fake srun that prints its argv: rendering, not submission — the cluster tests submit),
a dry-run on a machine without SLURM, and one check shared by dry-run and submit.
"""
import os
import re
import stat
import subprocess
import sys
import time
import types

import pytest

from orchestrator import cli
from orchestrator.executors import sbatch
from orchestrator.executors.base import JobRequest, SubmissionError
from orchestrator.executors.local import LocalExecutor, launch_command
from orchestrator.executors.slurm import SlurmExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
GOLDEN_DIR = os.path.join(ROOT, "tests", "golden")
PYTHON = "/opt/py 3/bin/python"        # pinned: nothing else in the text depends on this machine
# space, both quotes, ';', '%' (a SLURM pattern char), '$', a backslash, '#', '*' and '&'
NASTY = "/shared/it's a \"run\";rm -rf ~ %j %% $HOME \\n\\ #x *&"


def request(run_dir=f"{NASTY}/exp1", **kw):
    base = dict(run_name="exp1", run_dir=run_dir, log_dir=f"{run_dir}/logs", nodes=2, gpus_per_node=8,
                partition="dev", account="vision", qos="high", exclude="node[01-02]", mem_per_gpu="32G",
                time="1-00:00:00")
    base.update(kw)
    return JobRequest(**base)


def check_golden(name, text):
    path = os.path.join(GOLDEN_DIR, name)
    if os.environ.get("ORCH_UPDATE_GOLDEN"):
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    with open(path, encoding="utf-8") as f:
        assert text == f.read()


def test_single_job_script_matches_golden_file():
    check_golden("sbatch_job.txt", sbatch.render_job(request(), python=PYTHON))


def test_array_script_matches_golden_file():
    req = request(run_dir=NASTY, extra={"hold": True}, max_parallel=2, array_size=4)
    fmt = NASTY.replace("%", "%%") + "/p%03d"
    check_golden("sbatch_array.txt", sbatch.render_array(req, [0, 1, 2, 5], fmt, python=PYTHON))


# ---------------------------------------------------------------- what sbatch reads from the #SBATCH lines

def sbatch_argument(text):
    """One argument of an #SBATCH line, read as sbatch does (_get_argument in src/sbatch/opt.c), step
    for step: the loop stops at whitespace outside quotes *before* it looks at a pending backslash
    (so a backslash cannot protect a space), a backslash takes the next character, ' and " group,
    an unquoted # ends the line."""
    out, quote, escape, i = [], None, False, 0
    while i < len(text) and (quote or not text[i].isspace()):
        c = text[i]
        if escape:
            escape = False
        elif c == "\\":
            escape, i = True, i + 1
            continue
        elif quote:
            if c == quote:
                quote, i = None, i + 1
                continue
        elif c in "'\"":
            quote, i = c, i + 1
            continue
        elif c == "#":
            break
        out.append(c)
        i += 1
    assert quote is None, f"unmatched quote in {text!r}"
    return "".join(out), text[i:]


def test_the_parser_model_is_sbatchs_a_backslash_does_not_protect_a_space():
    # what the first version of the writer did, and the real sbatch refused ("Invalid directive ... a")
    assert sbatch_argument("--chdir=/x/it\\'s\\ a") == ("--chdir=/x/it's", " a")


def sbatch_options_of(script):
    options = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH"):
            argument, rest = sbatch_argument(line[len("#SBATCH"):].lstrip())
            assert not rest.strip(), f"{line!r} holds more than one argument"
            key, _, value = argument[2:].partition("=")
            options[key] = value
    return options


NO_BACKSLASH = NASTY.replace("\\", "")


def test_sbatch_reads_every_value_back_byte_exact():
    req = request(run_dir=f"{NO_BACKSLASH}/exp1")
    options = sbatch_options_of(sbatch.render_job(req, python=PYTHON))
    assert options["chdir"] == req.log_dir
    # SLURM expands the whole batch log path: the log dir's own % doubled, only %j left to expand
    assert options["output"] == req.log_dir.replace("%", "%%") + "/%j_0_log.out"
    assert options["job-name"] == "exp1" and options["exclude"] == "node[01-02]" and options["time"] == "1440"
    assert options["signal"] == "USR2@120" and options["requeue"] == "" and options["wckey"] == "orch"


def test_a_log_dir_with_a_backslash_gets_no_slurm_pattern():
    # a backslash anywhere turns SLURM's patterns off (and is dropped): such a path cannot be named to SLURM
    options = sbatch_options_of(sbatch.render_job(request(), python=PYTHON))
    assert options["output"] == "/dev/null" and options["chdir"] == request().log_dir


def test_array_options_name_task_logs_by_array_and_task():
    req = request(run_dir=NO_BACKSLASH, max_parallel=3, array_size=6)
    options = sbatch_options_of(sbatch.render_array(req, list(range(6)), "/x/p%03d", python=PYTHON))
    assert options["array"] == "0-5%3" and "hold" not in options
    assert options["output"] == f"{NO_BACKSLASH}/logs".replace("%", "%%") + "/%A_%a_0_log.out"
    assert options["chdir"] == f"{NO_BACKSLASH}/logs"


# ---------------------------------------------------------------- what bash hands to srun, and where logs go

@pytest.fixture
def fake_srun(tmp_path):
    """Runs the rendered script with bash in a log dir, with an `srun` on PATH that starts its command
    once (one node, SLURM_PROCID 0) and a `python` that prints its argv, NUL-separated."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text('#!/bin/bash\n[ "$1" = --unbuffered ] || exit 9\nshift\nSLURM_PROCID=0 exec "$@"\n')
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    python = bin_dir / "py thon"
    python.write_text('#!/bin/bash\nprintf "%s\\0" "$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    log_dir = tmp_path / "logs"
    log_dir.mkdir()

    def run(render, **env):
        path = tmp_path / "job.sh"
        path.write_text(render(str(python)))
        environ = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": "/nonexistent", **env}
        subprocess.run(["bash", str(path)], check=True, env=environ, cwd=log_dir)   # --chdir
        logs = {name: (log_dir / name).read_bytes() for name in os.listdir(log_dir)}
        return {name: text.split(b"\0")[:-1] for name, text in logs.items()}
    return run


def test_single_job_run_dir_reaches_the_launcher_byte_exact(fake_srun):
    req = request()
    logs = fake_srun(lambda python: sbatch.render_job(req, python=python), SLURM_JOB_ID="77")
    assert logs == {"77_0_log.out": [b"-u", b"-m", b"jobs.launch", req.run_dir.encode()]}


@pytest.mark.parametrize("task,expected", [(0, "p000"), (5, "p005"), (1234, "p1234")])
def test_array_task_run_dir_reaches_the_launcher_byte_exact(fake_srun, task, expected):
    req = request(run_dir=NASTY, array_size=2000)
    fmt = NASTY.replace("%", "%%") + "/p%03d"
    logs = fake_srun(lambda python: sbatch.render_array(req, [0, 5, 1234], fmt, python=python),
                     SLURM_JOB_ID="99", SLURM_ARRAY_JOB_ID="77", SLURM_ARRAY_TASK_ID=str(task))
    assert logs == {f"77_{task}_0_log.out": [b"-u", b"-m", b"jobs.launch", f"{NASTY}/{expected}".encode()]}
    assert f"{NASTY}/{expected}" == fmt % task


@pytest.mark.parametrize("fmt,parts", [
    ("/runs/sw/p%03d", ("/runs/sw/p", 3, "")),
    ("/runs/100%%/p%04d/x", ("/runs/100%/p", 4, "/x")),
    ("/a b/'q'/$x\\/p%03d", ("/a b/'q'/$x\\/p", 3, "")),
])
def test_split_run_dir_format(fmt, parts):
    assert sbatch.split_run_dir_format(fmt) == parts


@pytest.mark.parametrize("fmt,fragment", [
    ("/runs/sw/p", "exactly one task id placeholder"),
    ("/runs/p%03d/q%03d", "exactly one task id placeholder"),
    ("/runs/100%/p%03d", "neither '%%' nor"),
    ("/runs/%s/p%03d", "neither '%%' nor"),
    ("/runs/a\nb/p%03d", "control character"),
])
def test_bad_run_dir_formats_are_refused(fmt, fragment):
    with pytest.raises(SubmissionError, match=re.escape(fragment)):
        sbatch.split_run_dir_format(fmt)


# ---------------------------------------------------------------- the local executor's command

def test_local_submit_runs_the_printed_command_detached_and_logs_by_pid(tmp_path):
    run_dir = str(tmp_path / "it's a \"run\";%j $HOME \\x")
    fake_python = tmp_path / "python"
    fake_python.write_text('#!/bin/bash\nprintf "%s\\0" "$$" "$@"\n')
    fake_python.chmod(fake_python.stat().st_mode | stat.S_IEXEC)
    executor = LocalExecutor()
    executor.python = str(fake_python)
    req = request(run_dir=run_dir, nodes=1)
    assert launch_command(req, str(fake_python)) in executor.script(req).splitlines()
    job_id = executor.submit(req).job_id
    log = f"{run_dir}/logs/{job_id}_0_log.out"
    deadline = time.monotonic() + 30
    while not (os.path.exists(log) and os.path.getsize(log)) and time.monotonic() < deadline:
        time.sleep(0.05)
    with open(log, "rb") as f:   # the launcher's own pid is the job id, and its argument is the run dir
        assert f.read().split(b"\0")[:-1] == [job_id.encode(), b"-u", b"-m", b"jobs.launch", run_dir.encode()]


# ---------------------------------------------------------------- submit writes and hands over the same text

@pytest.fixture
def fake_sbatch(tmp_path, monkeypatch):
    bin_dir = tmp_path / "sbin"
    bin_dir.mkdir()
    script = bin_dir / "sbatch"
    script.write_text('#!/bin/bash\nif [ -n "$SBATCH_FAIL" ]; then echo "sbatch: error: $SBATCH_FAIL" >&2\n'
                      'echo "sbatch: error: Batch job submission failed" >&2; exit 1; fi\n'
                      'cp "$2" "$SEEN"; echo "4242;cluster"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("SEEN", str(tmp_path / "seen.sh"))
    return tmp_path / "seen.sh"


def test_submit_hands_sbatch_the_dry_run_text_and_keeps_it_by_job_id(tmp_path, fake_sbatch):
    req = request(run_dir=str(tmp_path / "r %j 'x'"))
    submitted = SlurmExecutor().submit(req)
    assert submitted.job_id == "4242"
    script = SlurmExecutor().script(req)
    assert fake_sbatch.read_text() == script
    assert open(os.path.join(req.log_dir, "4242_submission.sh")).read() == script
    assert os.listdir(req.log_dir) == ["4242_submission.sh"]


def test_sbatch_refusal_is_one_paragraph_with_its_words(tmp_path, fake_sbatch, monkeypatch):
    monkeypatch.setenv("SBATCH_FAIL", "invalid partition specified: nope")
    req = request(run_dir=str(tmp_path / "r"))
    with pytest.raises(SubmissionError) as info:
        SlurmExecutor().submit_array(req, [0, 1], str(tmp_path / "p%03d"))
    assert str(info.value) == ("sbatch refused the job array: sbatch: error: invalid partition specified: nope "
                               "sbatch: error: Batch job submission failed")
    assert os.listdir(req.log_dir) == []   # no script left behind


def test_no_sbatch_on_path_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SubmissionError, match="sbatch is not on PATH"):
        SlurmExecutor().submit(request(run_dir=str(tmp_path / "r")))


# ---------------------------------------------------------------- the CLI: dry-run without SLURM, same checks

@pytest.fixture
def tiny_data(tmp_path):
    from orchestrator.synth import make_synthetic_dataset
    make_synthetic_dataset(str(tmp_path / "data"), num_train=8, num_val=2, image_size=64, seed=0)
    return str(tmp_path / "data")


def submit_args(tiny_data, *extra):
    return ["submit", os.path.join(ROOT, "configs", "demo.yml"), "--dry-run", "--name", "golden", "--gpus", "16",
            "--gpus-per-node", "8", "--partition", "dev", "--time", "1-00:00:00", "--account", "vision", "--qos",
            "high", "--mem-per-gpu", "32G", "--exclude", "node[01-02]", "work_dir=/shared/runs",
            f"data.train.ann_file={tiny_data}/train.json", f"data.val.ann_file={tiny_data}/val.json",
            f"data.train.img_dir={tiny_data}/train", f"data.val.img_dir={tiny_data}/val",
            "data.batch_per_gpu=4", *extra]


def test_dry_run_works_without_slurm_and_prints_the_golden_script(tiny_data, tmp_path):
    """`orch submit --executor slurm --dry-run` in a process whose PATH has no srun/sbatch."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty), "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-m", "orchestrator.cli", *submit_args(tiny_data, "--executor", "slurm")],
                            capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout.replace(sys.executable, "<python>").replace(tiny_data, "<data>")
    with open(os.path.join(GOLDEN_DIR, "dry_run_slurm.txt")) as f:
        assert out == f.read()
    printed = result.stdout.split("# slurm submission script\n\n", 1)[1]
    req = JobRequest(run_name="golden", run_dir="/shared/runs/golden", log_dir="/shared/runs/golden/logs", nodes=2,
                     gpus_per_node=8, partition="dev", account="vision", qos="high", exclude="node[01-02]",
                     mem_per_gpu="32G", time="1-00:00:00", cpus_per_gpu=2)
    assert printed == sbatch.render_job(req) + "\n"
    assert not os.path.exists("/shared/runs/golden")


def test_the_demo_config_dry_run_shows_the_sbatch_script(tiny_data, capsys):
    assert cli.main(submit_args(tiny_data)) == 0          # no --executor: demo.yml no longer pins local
    assert "# slurm submission script" in capsys.readouterr().out


@pytest.mark.parametrize("dry_run", [True, False])
def test_local_executor_refuses_two_nodes_in_dry_run_and_submit_alike(tiny_data, tmp_path, capsys, dry_run):
    args = submit_args(tiny_data, "--executor", "local", f"work_dir={tmp_path}/runs")
    if not dry_run:
        args.remove("--dry-run")
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "the local executor runs one node; this plan needs 2 nodes" in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "runs")


def test_slurm_check_runs_the_partition_limits_in_dry_run_and_submit(tiny_data, tmp_path, capsys, monkeypatch):
    import orchestrator

    seen = []

    def check_request(req):
        seen.append(req.run_name)
        raise SubmissionError(f"partition dev has no node with {req.gpus_per_node} GPUs")
    fake = types.ModuleType("orchestrator.slurm_limits")
    fake.check_request = check_request
    monkeypatch.setitem(sys.modules, "orchestrator.slurm_limits", fake)
    monkeypatch.setattr(orchestrator, "slurm_limits", fake, raising=False)
    for extra in (["--dry-run"], []):
        args = [a for a in submit_args(tiny_data, "--executor", "slurm", f"work_dir={tmp_path}/runs") if a != "--dry-run"]
        assert cli.main(args + extra) == 2
        assert "partition dev has no node with 8 GPUs" in capsys.readouterr().err
    assert seen == ["golden", "golden"]
    assert not os.path.exists(tmp_path / "runs")


def test_dry_run_imports_neither_submitit_nor_torch(tiny_data, tmp_path):
    """Nor fsspec, for local paths: start-up time is what `orch submit --dry-run` costs."""
    heavy = "{'submitit', 'torch', 'fsspec', 'torchvision', 'transformers'}"
    code = ("import sys; from orchestrator import cli; "
            f"assert cli.main({submit_args(tiny_data, '--executor', 'slurm')!r}) == 0; "
            f"assert not {heavy} & set(sys.modules), sorted({heavy} & set(sys.modules))")
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
