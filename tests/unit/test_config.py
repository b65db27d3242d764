"""Config layering, overrides, validation and the CLI commands that show them."""
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
