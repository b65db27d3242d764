"""The trainer kinds wired into orch: the `trainer:` section at load time, the kind's refusals in `orch plan`,
the per-node command lines of `orch submit --dry-run`, the launcher's loadability check, status.json
written by the launcher for a toolbox job, and `orch status` reading it."""
import json
import os
import subprocess
import sys
import zipfile

import pytest

from jobs import toolbox_job
from jobutil import ROOT, make_dataset
from orchestrator import cli, config as config_mod, kinds, runs, submission, toolbox
from orchestrator.kinds.base import NodeCommand


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_dataset(str(tmp_path_factory.mktemp("data")), num_train=8, num_val=4, size=64)


def write_config(tmp_path, data_root, trainer: str, extra: str = "") -> str:
    path = tmp_path / "cfg.yml"
    path.write_text(f"""\
trainer: {trainer}
work_dir: {tmp_path}/runs
data:
  train: {{ann_file: {data_root}/train.json, img_dir: {data_root}/train}}
  val: {{ann_file: {data_root}/val.json, img_dir: {data_root}/val}}
resources: {{gpus: 1, use_cpu: true, executor: local}}
{extra}""")
    return str(path)


def error_of(capsys, argv) -> str:
    assert cli.main(argv) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("trainer,says", [
    ("{kind: ultralitics, model: yolo11n.yaml}", "trainer.kind = 'ultralitics' is not one of orch, ultralytics"),
    ("{kind: ultralitics, model: yolo11n.yaml}", "did you mean 'ultralytics'?"),
    ("{kind: ultralytics, modle: yolo11n.yaml}", "trainer.modle is not a key of trainer kind 'ultralytics'; "
                                                 "did you mean trainer.model?"),
    ("{kind: ultralytics}", "trainer kind 'ultralytics' needs trainer.model"),
    ("{kind: rtdetr, root: /x, config: 3}", "trainer.config = 3 must be a str"),
    ("{model: yolo11n.yaml}", "trainer.model is not a key of the built-in trainer"),
    ("{kind: command, argv: [t.py], launcher: spawn}", "trainer.launcher = 'spawn' is not one of torchrun, self, single"),
])
def test_trainer_section_is_checked_at_load_time(tmp_path, data_root, capsys, trainer, says):
    err = error_of(capsys, ["config", "show", write_config(tmp_path, data_root, trainer)])
    assert says in err and "cfg.yml" in err and "Traceback" not in err


def test_default_trainer_is_orch_and_shows_in_config_show(tmp_path, data_root, capsys):
    loaded = config_mod.load_config(write_config(tmp_path, data_root, "{kind: orch}"))
    assert loaded.data["trainer"] == {"kind": "orch"}
    path = tmp_path / "plain.yml"
    path.write_text("model: {name: fcos_resnet50_fpn}\n")
    assert config_mod.load_config(str(path)).data["trainer"] == {"kind": "orch"}


def test_plan_refuses_what_the_toolbox_cannot_do_before_anything_is_queued(tmp_path, data_root, capsys):
    cfg = write_config(tmp_path, data_root, "{kind: ultralytics, model: yolo11n.yaml}")
    err = error_of(capsys, ["plan", cfg, "--gpus", "16", "resources.use_cpu=false"])
    assert "trains on one node" in err
    err = error_of(capsys, ["submit", cfg, "--gpus", "16", "resources.use_cpu=false", "--dry-run"])
    assert "trains on one node" in err
    assert not os.path.exists(tmp_path / "runs")
    cfg = write_config(tmp_path, data_root, "{kind: rtdetr, root: /opt/rt, config: c.yml, num_classes: 4}")
    assert "fails under torchrun on CPU" in error_of(capsys, ["plan", cfg, "--gpus", "2"])


def test_dry_run_prints_each_nodes_exact_command_line(tmp_path, data_root, capsys):
    cfg = write_config(tmp_path, data_root, "{kind: command, argv: [train.py, --lr, '{lr}', --out, '{output_dir}'], "
                                            "resume_args: [--resume, '{checkpoint}']}")
    assert cli.main(["submit", cfg, "--name", "d", "--dry-run", "--gpus", "2"]) == 0
    out = capsys.readouterr().out
    run_dir = f"{tmp_path}/runs/d"
    doc = json.loads(json.dumps(submission.prepare(config_mod.load_config(cfg, ["resources.gpus=2"]).data, "d").doc))
    lr = doc["plan"]["lr"]
    assert "# node 0 (torchrun)" in out
    assert (f"{sys.executable} -m torch.distributed.run --nproc-per-node=2 --max-restarts=0 --standalone --nnodes=1 "
            f"train.py --lr {lr:g} --out {run_dir}/output") in out
    assert f"--out {run_dir}/output --resume '<checkpoint>'" in out
    assert f"export ORCH_PLAN={run_dir}/plan.json" in out
    assert not os.path.exists(tmp_path / "runs")       # a dry run writes nothing


def test_command_line_of_each_launcher():
    two_nodes = {"node_rank": 1, "nodes": 2, "first_node": "n1", "port": 29401}
    torchrun = NodeCommand(argv=["train.py", "--x"], launcher="torchrun", python="/env/bin/python")
    assert toolbox.command_line(torchrun, 4, two_nodes, "orch-7-0") == [
        "/env/bin/python", "-m", "torch.distributed.run", "--nproc-per-node=4", "--max-restarts=0", "--nnodes=2",
        "--rdzv-backend=c10d", "--rdzv-endpoint=n1:29401", "--rdzv-id=orch-7-0", "train.py", "--x"]
    for launcher in ("self", "single"):
        assert toolbox.command_line(NodeCommand(argv=["yolo", "train"], launcher=launcher), 4, two_nodes, "i") == \
            ["yolo", "train"]


def test_plan_and_config_show_stay_torch_free(tmp_path, data_root):
    cfg = write_config(tmp_path, data_root, "{kind: ultralytics, model: yolo11n.yaml}")
    code = ("import sys; from orchestrator import cli; cli.main(['plan', %r]); cli.main(['config', 'show', %r]); "
            "bad = [m for m in ('torch', 'torchvision', 'submitit', 'ultralytics') if m in sys.modules]; "
            "assert not bad, bad") % (cfg, cfg)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": ROOT})
    assert result.returncode == 0, result.stderr


def test_loadable_rejects_a_torn_checkpoint(tmp_path):
    good = tmp_path / "last.pt"
    with zipfile.ZipFile(good, "w") as archive:        # torch.save's format: a zip archive, directory last
        archive.writestr("last/data.pkl", b"x" * 100_000)
    assert toolbox_job.loadable(str(good))
    torn = tmp_path / "torn.pt"
    torn.write_bytes(good.read_bytes()[:50_000])       # killed mid-write
    assert not toolbox_job.loadable(str(torn))
    corrupt = tmp_path / "corrupt.pt"
    data = bytearray(good.read_bytes())
    data[200] ^= 0xFF                                  # a flipped byte inside a record: its CRC fails
    corrupt.write_bytes(bytes(data))
    assert not toolbox_job.loadable(str(corrupt))


def test_launcher_writes_status_from_the_toolbox_and_orch_status_reads_it(tmp_path, data_root, capsys):
    cfg = write_config(tmp_path, data_root, "{kind: command, argv: [t.py], metrics_file: '{output_dir}/m.jsonl'}")
    loaded = config_mod.load_config(cfg)
    plan = runs.build_plan(loaded.data)
    doc = runs.create_run_dir(loaded.data["work_dir"], "s", plan, loaded.data)
    run_dir = doc["run_dir"]
    os.makedirs(os.path.join(run_dir, "output"))
    with open(os.path.join(run_dir, "output", "m.jsonl"), "w") as f:
        f.write(json.dumps({"iteration": 3, "epoch": 1, "loss": 0.5, "bbox_mAP": 0.25}) + "\n")
        f.write(json.dumps({"iteration": 6, "epoch": 2, "loss": 0.4, "bbox_mAP": 0.5}) + "\n")
    job = toolbox_job.ToolboxJob(doc, run_dir, {"node_rank": 0, "nodes": 1, "job_id": "123", "first_node": None})
    job.write_status("COMPLETED")
    status = submission.run_status(run_dir, scheduler={"state": "ENDED", "restarts": 0})
    assert status["state"] == "COMPLETED"                     # the launcher's word as the job's word
    assert (status["iteration"], status["epoch"], status["kind"]) == (6, 2, "command")
    assert status["eval"]["bbox_mAP"] == 0.5 and status["best_bbox_mAP"] == 0.5
    assert status["metrics"]["loss"] == 0.4
    other = toolbox_job.ToolboxJob(doc, run_dir, {"node_rank": 1, "nodes": 2, "job_id": "123", "first_node": "n"})
    other.write_status("FAILED")                               # only node 0 owns status.json
    assert submission.read_job_status(run_dir)["state"] == "COMPLETED"


def test_detectron2_resume_points_last_checkpoint_at_the_newest_loadable_file(tmp_path):
    from kinds_util import TRAINERS, plan_doc_for

    doc = plan_doc_for(TRAINERS["detectron2"], gpus=1, gpus_per_node=1)
    doc["run_dir"] = run_dir = str(tmp_path / "run")
    out = os.path.join(run_dir, "detectron2")
    os.makedirs(out)
    good = os.path.join(out, "model_0000049.pth")
    with zipfile.ZipFile(good, "w") as archive:
        archive.writestr("m/data.pkl", b"w" * 1000)
    with open(os.path.join(out, "model_0000099.pth"), "wb") as f:
        f.write(open(good, "rb").read()[:500])                    # torn
    with open(os.path.join(out, "last_checkpoint"), "w") as f:
        f.write("model_0000099.pth")
    job = toolbox_job.ToolboxJob(doc, run_dir, {"node_rank": 0, "nodes": 1, "job_id": "9", "first_node": None})
    argv, env, cwd = job.command("orch-9-0", 29400)
    assert "--resume" in argv and job.resumed_from == good
    assert open(os.path.join(out, "last_checkpoint")).read() == "model_0000049.pth"   # what --resume loads


def test_resume_from_skips_a_torn_last_checkpoint(tmp_path):
    from kinds_util import TRAINERS, plan_doc_for

    doc = plan_doc_for(TRAINERS["rtdetr"], gpus=1, gpus_per_node=1)
    doc["run_dir"] = run_dir = str(tmp_path / "run")
    out = os.path.join(run_dir, "rtdetr")
    os.makedirs(out)
    for name in ("checkpoint0000.pth", "checkpoint0001.pth", "last.pth"):
        with zipfile.ZipFile(os.path.join(out, name), "w") as archive:
            archive.writestr("m/data.pkl", name.encode() * 500)
    assert toolbox.resume_from(run_dir, doc) == os.path.join(out, "last.pth")
    os.truncate(os.path.join(out, "last.pth"), 300)                 # killed during its in-place torch.save
    assert toolbox.resume_from(run_dir, doc) == os.path.join(out, "checkpoint0001.pth")


def test_mmdet_job_resumes_from_the_hooks_checkpoint_with_orch_first_on_pythonpath(tmp_path, monkeypatch):
    from kinds_util import TRAINERS, plan_doc_for
    from orchestrator.kinds import mmdet

    doc = plan_doc_for(TRAINERS["mmdet"], gpus=1, gpus_per_node=1)
    doc["run_dir"] = run_dir = str(tmp_path / "run")
    out = os.path.join(run_dir, "mmdet")
    os.makedirs(out)
    saved = os.path.join(out, "preempted_iter_37.pth")          # what jobs/mmengine_hook.py writes at the warning
    with zipfile.ZipFile(saved, "w") as archive:
        archive.writestr("m/data.pkl", b"w" * 1000)
    with open(os.path.join(out, "last_checkpoint"), "w") as f:
        f.write(saved)
    monkeypatch.setenv("PYTHONPATH", "/user/site")
    job = toolbox_job.ToolboxJob(doc, run_dir, {"node_rank": 0, "nodes": 1, "job_id": "7", "first_node": None})
    argv, env, cwd = job.command("orch-7-0", 29400)
    assert argv[argv.index("--resume") + 1] == saved
    assert env["PYTHONPATH"] == mmdet.ORCH_ROOT + os.pathsep + "/user/site"   # the user's path is kept
    assert "saved a checkpoint at the warning" in job.lost_work_note(saved=True)
    assert "repeats the work since" in job.lost_work_note(saved=False)
