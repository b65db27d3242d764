"""Config layering, overrides, validation and the CLI commands that show them."""
import os
import subprocess
import sys
import textwrap

import pytest

from orchestrator import cli, config
from orchestrator.config import ConfigError


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return str(path)


@pytest.fixture
def layered(tmp_path):
    write(tmp_path / "base" / "runtime.yml", """
        work_dir: runs/
        optimizer: {name: sgd, base_lr: 0.02, momentum: 0.9}
        schedule: {milestones: [8, 11], epochs: 12}
        resources: {gpus: 8, partition: dev}
    """)
    write(tmp_path / "base" / "model.yml", """
        __include__: [runtime.yml]
        model: {name: fasterrcnn_resnet50_fpn}
        schedule: {milestones: [16, 22]}
    """)
    return write(tmp_path / "exp" / "cfg.yml", """
        __include__: [../base/model.yml]
        optimizer: {base_lr: 0.01}
        schedule: {epochs: 24}
    """)


def test_include_deep_merges_and_lists_replace(layered):
    loaded = config.load_config(layered)
    assert loaded.get("optimizer.base_lr") == 0.01          # top file wins
    assert loaded.get("optimizer.momentum") == 0.9           # mapping merged, not replaced
    assert loaded.get("schedule.milestones") == [16, 22]     # list replaced, not appended
    assert loaded.get("schedule.epochs") == 24
    assert loaded.get("model.name") == "fasterrcnn_resnet50_fpn"
    assert loaded.get("resources.partition") == "dev"


def test_explain_names_the_file_that_set_each_key(layered):
    loaded = config.load_config(layered, ["data.batch_per_gpu=4"])
    assert loaded.sources["optimizer.base_lr"].endswith("exp/cfg.yml")
    assert loaded.sources["optimizer.momentum"].endswith("base/runtime.yml")
    assert loaded.sources["schedule.milestones"].endswith("base/model.yml")
    assert loaded.sources["data.batch_per_gpu"] == "override"
    text = config.explain(loaded)
    assert "data.batch_per_gpu" in text and "command line" in text


def test_overrides_are_parsed_as_yaml(layered):
    loaded = config.load_config(layered, ["optimizer.base_lr=1e-3", "schedule.milestones=[3, 5]",
                                          "data.filter_empty=false", "resources.partition=gpu"])
    assert loaded.get("optimizer.base_lr") == 0.001
    assert loaded.get("schedule.milestones") == [3, 5]
    assert loaded.get("data.filter_empty") is False
    assert loaded.get("resources.partition") == "gpu"


def test_include_cycle_is_named(tmp_path):
    a = write(tmp_path / "a.yml", "__include__: [b.yml]\n")
    write(tmp_path / "b.yml", "__include__: [a.yml]\n")
    with pytest.raises(ConfigError, match=r"include cycle: .*a\.yml -> .*b\.yml -> .*a\.yml"):
        config.load_config(a)


@pytest.mark.parametrize("override,fragment", [
    ("optimizer.base_lrr=0.1", "did you mean 'optimizer.base_lr'"),
    ("schedul.epochs=3", "did you mean 'schedule.epochs'"),
    ("data.batch_per_gpu=0", "data.batch_per_gpu = 0 must be > 0"),
    ("schedule.epochs=-1", "schedule.epochs = -1 must be > 0"),
    ("schedule.epochs=ten", "must be an integer"),
    ("data.filter_empty=3", "must be true/false"),
    ("optimizer.name=sgdd", "did you mean 'sgd'"),
    ("model.name=fasterrcnn_resnet50", "is not one of"),
    ("schedule.keep_last=1", "must be >= 2"),
    ("optimizer=3", "must be a mapping"),
])
def test_bad_values_are_rejected_naming_the_key(layered, override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace("[", r"\[")):
        config.load_config(layered, [override])


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    path = write(tmp_path / "cfg.yml", "optimizer: {base_lrr: 0.1}\n")
    with pytest.raises(ConfigError) as err:
        config.load_config(path)
    assert "cfg.yml" in str(err.value) and "optimizer.base_lr" in str(err.value)


def test_python_tags_are_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = write(tmp_path / "evil.yml",
                 f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="never executed"):
        config.load_config(path)
    assert not marker.exists()


def test_relative_paths_become_absolute_urls_stay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path / "cfg.yml", """
        work_dir: s3://bucket/runs
        data: {train: {ann_file: data/train.json, img_dir: memory://imgs}}
    """)
    loaded = config.load_config(path)
    assert loaded.get("work_dir") == "s3://bucket/runs"
    assert loaded.get("data.train.ann_file") == str(tmp_path / "data" / "train.json")
    assert loaded.get("data.train.img_dir") == "memory://imgs"


def test_secrets_are_redacted():
    data = {"storage_options": {"s3": {"key": "AKIA", "secret": "s3cr3t", "endpoint_url": "http://x"}}}
    safe = config.redact_secrets(data)
    assert safe["storage_options"]["s3"] == {"key": "***", "secret": "***", "endpoint_url": "http://x"}
    assert data["storage_options"]["s3"]["secret"] == "s3cr3t"  # the original is untouched


def test_cli_config_show_prints_resolved_yaml(layered, capsys):
    assert cli.main(["config", "show", layered, "optimizer.base_lr=0.005"]) == 0
    out = capsys.readouterr().out
    assert "base_lr: 0.005" in out and "milestones:\n  - 16\n  - 22" in out


def test_cli_error_is_one_line_not_a_traceback(layered, capsys):
    assert cli.main(["plan", layered, "optimizer.base_lrr=0.1", "--train-images", "10"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("orch: error:") and "Traceback" not in err and "did you mean" in err


def test_cli_plan_json_with_overrides_after_options(layered, capsys):
    import json
    assert cli.main(["plan", layered, "--gpus", "16", "--train-images", "117266", "--json",
                     "data.batch_per_gpu=4"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["lr"] == pytest.approx(0.04)  # base 0.01 x 64/16
    assert plan["nodes"] == 2 and plan["iters_per_epoch"] == 1833


def test_fast_commands_do_not_import_torch(layered):
    code = ("import sys; from orchestrator import cli; "
            f"cli.main(['plan', {layered!r}, '--train-images', '10']); "
            f"cli.main(['config', 'show', {layered!r}]); "
            "assert 'torch' not in sys.modules and 'submitit' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


# ---------------------------------------------------------------- everything the job would reject (issue 11)

@pytest.mark.parametrize("override,fragments", [
    # unknown nested keys, with a did-you-mean next to them
    ("data.augment.resize={min_sise: 600}",
     ["data.augment.resize.min_sise", "did you mean 'data.augment.resize.min_size'"]),
    ("data.augment.resize={max_size: 900}", ["data.augment.resize needs min_size"]),
    ("data.augment.resize={min_size: [0, 800]}", ["data.augment.resize.min_size", "size in pixels"]),
    ("data.augment.photometric={brightnes: 0.2}",
     ["data.augment.photometric.brightnes", "did you mean 'data.augment.photometric.brightness'"]),
    ("data.augment.photometric={hue: 0.9}", ["data.augment.photometric.hue = 0.9", "at most 0.5"]),
    ("data.augment.zoom_out={max_scal: 4}",
     ["data.augment.zoom_out.max_scal", "did you mean 'data.augment.zoom_out.max_scale'"]),
    ("data.augment.zoom_out={p: 1.5}", ["data.augment.zoom_out.p = 1.5", "between 0 and 1"]),
    ("data.augment.zoom_out={max_scale: 0.5}", ["data.augment.zoom_out.max_scale = 0.5", "must be >= 1"]),
    ("data.augment.iou_crop={prob: 0.8}", ["data.augment.iou_crop.prob", "did you mean 'data.augment.iou_crop.p'"]),
    ("data.augment.stop_epochs=71", ["data.augment.stop_epochs", "did you mean 'data.augment.stop_epoch'"]),
    ("data.augment.multiscale=[480, 0]", ["data.augment.multiscale = [480, 0]", "size in pixels"]),
    ("data.augment.multiscal=[480]", ["did you mean 'data.augment.multiscale'"]),
    ("data.augment.stop_epoch=-1", ["data.augment.stop_epoch = -1", "must be >= 0"]),
    ("optimizer.param_groups=[{patern: backbone}]",
     ["optimizer.param_groups[0].patern", "did you mean 'optimizer.param_groups[0].pattern'"]),
    ("optimizer.param_groups=[{lr_mult: 0.1}]", ["optimizer.param_groups[0] needs pattern"]),
    ("optimizer.param_groups=[{pattern: '(backbone'}]", ["optimizer.param_groups[0].pattern", "regular expression"]),
    ("optimizer.param_groups=[backbone]", ["optimizer.param_groups[0] = 'backbone' must be a mapping"]),
    ("optimizer.betas=[0.9]", ["optimizer.betas = [0.9]", "two numbers"]),
    ("optimizer.betas=[0.9, 1.5]", ["optimizer.betas", "two numbers in [0, 1)"]),
    # model kwargs and ranges from the model table
    ("model.trainable_backbone_layers=9", ["model.trainable_backbone_layers = 9", "ssdlite320_mobilenet_v3_large",
                                           "6 (all layers)"]),
    ("model.kwargs={nonsense: 1}", ["model.kwargs.nonsense", "valid keys are"]),
    ("model.kwargs={detection_per_img: 50}", ["did you mean 'model.kwargs.detections_per_img'"]),
    ("model.kwargs={nms_thresh: 2}", ["model.kwargs.nms_thresh = 2", "between 0 and 1"]),
    ("model.kwargs={min_size: 300}", ["set model.min_size instead"]),
    ("model.frozen_bn=true", ["model.frozen_bn = true", "keeps trainable BatchNorm"]),
    # non-finite and absurd numbers
    ("optimizer.base_lr=.inf", ["optimizer.base_lr = inf is not a finite number"]),
    ("optimizer.base_lr=.nan", ["optimizer.base_lr = nan is not a finite number"]),
    ("schedule.milestones=[8, .inf]", ["schedule.milestones[1] = inf is not a finite number"]),
    ("schedule.epochs=10000000000000000000", ["schedule.epochs = 10000000000000000000 must be at most 100000"]),
    ("data.batch_per_gpu=100000", ["data.batch_per_gpu = 100000 must be at most 1024"]),
    ("resources.gpus_per_node=1000", ["resources.gpus_per_node = 1000 must be at most 64"]),
    ("optimizer.momentum=5", ["optimizer.momentum = 5 must be at most 1"]),
    # duplicate keys inside an override's mapping
    ("model.kwargs={nms_thresh: 0.5, nms_thresh: 0.6}", ["appears twice"]),
])
def test_what_the_job_would_reject_is_rejected_at_load_time(layered, override, fragments):
    with pytest.raises(ConfigError) as err:
        config.load_config(layered, ["model.name=ssdlite320_mobilenet_v3_large", override])
    message = str(err.value)
    for fragment in fragments:
        assert fragment in message, message
    assert "\n" not in message


def test_trainable_backbone_layers_range_is_per_model(layered):
    assert config.load_config(layered, ["model.name=fasterrcnn_resnet50_fpn", "model.trainable_backbone_layers=5"])
    with pytest.raises(ConfigError, match=r"= 6 is out of range for fasterrcnn_resnet50_fpn: use 0 to 5"):
        config.load_config(layered, ["model.name=fasterrcnn_resnet50_fpn", "model.trainable_backbone_layers=6"])
    loaded = config.load_config(layered, ["model.name=retinanet_resnet50_fpn",
                                          "model.kwargs={score_thresh: 1e-2, topk_candidates: 500}"])
    assert loaded.get("model.kwargs") == {"score_thresh": 0.01, "topk_candidates": 500}


@pytest.mark.parametrize("text,fragments", [
    ("schedule: {epochs: 12, max_iters: 1000}\n", ["cfg.yml", "schedule.epochs = 12 and schedule.max_iters = 1000"]),
    ("data: {batch_per_gpu: 4, total_batch_size: 64}\n", ["data.batch_per_gpu = 4 and data.total_batch_size = 64"]),
    ("schedule: {milestones: [8], milestones_iters: [800]}\n", ["schedule.milestones", "schedule.milestones_iters"]),
    ("schedule: {warmup_iters: 10, warmup_epochs: 1}\n", ["schedule.warmup_iters", "schedule.warmup_epochs"]),
    ("schedule: {checkpoint_every_epochs: 1, checkpoint_every_iters: 100}\n", ["schedule.checkpoint_every_iters"]),
    ("schedule: {eval_every_epochs: 1, eval_every_iters: 100}\n", ["schedule.eval_every_iters"]),
    ("schedule: {epochs: null, max_iters: null}\n", ["schedule.epochs and schedule.max_iters are both null"]),
    ("schedule: {epochs: 3}\nmodel: {name: fcos_resnet50_fpn}\nschedule: {epochs: 4}\n",
     ["cfg.yml", "key 'schedule' appears twice", "lines 1 and 3"]),
    ("optimizer:\n  base_lr: 0.1\n  base_lr: 0.2\n", ["key 'base_lr' appears twice"]),
])
def test_one_file_saying_one_thing_twice_is_refused(tmp_path, text, fragments):
    path = write(tmp_path / "cfg.yml", text)
    with pytest.raises(ConfigError) as err:
        config.load_config(path)
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)


def test_a_later_layer_choosing_the_other_of_a_pair_clears_the_first(layered):
    loaded = config.load_config(layered, ["schedule.max_iters=100", "data.total_batch_size=32"])
    assert loaded.get("schedule.max_iters") == 100 and loaded.get("schedule.epochs") is None
    assert loaded.get("data.total_batch_size") == 32 and loaded.get("data.batch_per_gpu") is None
    with pytest.raises(ConfigError, match="schedule.epochs = 3 and schedule.max_iters = 100 are both set"):
        config.load_config(layered, ["schedule.max_iters=100", "schedule.epochs=3"])


def test_config_paths_that_are_not_yaml_files(tmp_path):
    folder = tmp_path / "configs"
    folder.mkdir()
    with pytest.raises(ConfigError, match="is a directory"):
        config.load_config(str(folder))
    including = write(tmp_path / "inc.yml", "__include__: [configs]\n")
    with pytest.raises(ConfigError, match=r"inc\.yml: __include__ entry 'configs' is a directory"):
        config.load_config(including)
    latin1 = tmp_path / "latin1.yml"
    latin1.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yml is not UTF-8 text .*save it as UTF-8"):
        config.load_config(str(latin1))


@pytest.mark.parametrize("argv,fragment", [
    (["plan", "CFG", "--train-images", "-5"], "argument --train-images: '-5' is not a positive integer"),
    (["config", "show", "CFG", "optimizer.betas=[0.9]"], "optimizer.betas = [0.9]"),
    (["plan", "CFG", "--train-images", "10", "data.augment.resize={min_sise: 600}"],
     "did you mean 'data.augment.resize.min_size'"),
    (["plan", "CFG", "--gpus", "16", "--train-images", "10", "resources.nodes=4", "resources.gpus_per_node=2"],
     "--nodes 4 × --gpus-per-node 2 hold 8 GPUs, not 16; use --gpus 8, or --nodes 8"),
    (["plan", "DIR", "--train-images", "10"], "is a directory; name a YAML file in it"),
    (["config", "show", "CFG", "schedule.epochs=10000000000000000000"], "must be at most 100000"),
])
def test_cli_blames_the_flag_or_key_in_one_paragraph(layered, argv, fragment):
    argv = [layered if a == "CFG" else os.path.dirname(layered) if a == "DIR" else a for a in argv]
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", *argv], capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert fragment in proc.stderr, proc.stderr
    assert "annotation" not in proc.stderr
