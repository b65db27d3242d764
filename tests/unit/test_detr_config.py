"""The transformer detectors are model.name values: validated torch-free against orch's table."""
import os
import subprocess
import sys

import pytest

from orchestrator import config, modelspec
from orchestrator.config import ConfigError
from orchestrator.detr_table import DETR_MODELS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load(tmp_path, *overrides):
    path = tmp_path / "c.yml"
    path.write_text("model: {name: rtdetr_v2_r18vd}\n")
    return config.load_config(str(path), list(overrides)).data


def test_every_table_name_is_a_model_name_of_the_detr_family():
    for name in DETR_MODELS:
        assert modelspec.is_detr(name) and name in modelspec.MODEL_NAMES
    assert not modelspec.is_detr("fasterrcnn_resnet50_fpn")
    assert modelspec.MODELS["rtdetr_v2_r18vd"].square_input and modelspec.MODELS["dfine_s"].default_size == 640
    assert modelspec.MODELS["detr_r50"].default_size == 800 and not modelspec.MODELS["detr_r50"].square_input


def test_table_numbers_are_accepted_as_kwargs(tmp_path):
    data = load(tmp_path, "model.kwargs={decoder_layers: 2, backbone: {depths: [1, 1, 1, 1]}}",
                "model.ema={decay: 0.9999}")
    assert data["model"]["kwargs"]["decoder_layers"] == 2
    assert data["model"]["ema"] == {"decay": 0.9999}


@pytest.mark.parametrize("override, fragment", [
    ("model.kwargs={decoder_layer: 2}", "Did you mean 'decoder_layers'?"),
    ("model.kwargs={backbone: {dept: [1]}}", "Did you mean 'depths'?"),
    ("model.kwargs={decoder_layers: [2]}", "model.kwargs.decoder_layers = [2] must be a number"),
    ("model.kwargs={backbone: {depths: 2}}", "model.kwargs.backbone.depths = 2 must be a list"),
    ("model.trainable_backbone_layers=2", "optimizer.param_groups rule"),
    ("model.frozen_bn=true", "model.frozen_bn"),
    ("model.ema={decy: 0.9}", "did you mean 'model.ema.decay'?"),
    ("model.ema={decay: 1.0}", "model.ema.decay = 1.0 must be >= 0 and < 1"),
    ("model.ema={warmup_iters: 5}", "decay"),
])
def test_bad_detr_settings_are_one_sentence_naming_the_key(tmp_path, override, fragment):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, override)
    assert fragment in str(err.value)


def test_config_show_of_a_detr_model_imports_no_torch(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("model: {name: dfine_s, kwargs: {decoder_layers: 2}}\n")
    code = ("import sys; from orchestrator import cli; cli.main(['config', 'show', %r]); "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not bad, bad" % str(path))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "dfine_s" in out.stdout


def test_the_rtdetr_v2_r18vd_config_carries_the_published_recipe(capsys):
    from orchestrator import cli, runs

    data = config.load_config(os.path.join(ROOT, "configs", "rtdetr_v2_r18vd.yml")).data
    opt, model = data["optimizer"], data["model"]
    assert (opt["name"], opt["base_lr"], opt["base_batch_size"]) == ("adamw", 0.0001, 16)
    assert (opt["weight_decay"], opt["norm_weight_decay"], opt["clip_grad_norm"]) == (0.0001, 0, 0.1)
    assert model["ema"] == {"decay": 0.9999, "warmup_iters": 2000} and model["min_size"] == 640
    assert data["schedule"]["warmup_iters"] == 2000 and data["data"]["total_batch_size"] == 16
    augment = data["data"]["augment"]
    assert augment["zoom_out"] == {"p": 0.5, "max_scale": 4} and augment["iou_crop"] == {"p": 0.8}
    assert augment["stop_epoch"] == 117 and augment["multiscale"] is None  # r18vd: collate scales ~
    r50 = config.load_config(os.path.join(ROOT, "configs", "rtdetr_v2_r50vd.yml")).data["data"]["augment"]
    assert r50["stop_epoch"] == 71 and r50["multiscale"][0] == 480 and r50["multiscale"].count(640) == 3
    dfine = config.load_config(os.path.join(ROOT, "configs", "dfine_s.yml")).data["data"]["augment"]
    assert dfine["stop_epoch"] == 120 and dfine["multiscale"].count(640) == 20 and len(dfine["multiscale"]) == 30
    # DETRs are not scaled linearly: a total batch of 8 still trains at 1e-4
    small = config.load_config(os.path.join(ROOT, "configs", "rtdetr_v2_r18vd.yml"), ["data.total_batch_size=8"])
    plan = runs.build_plan(small.data, gpus=2, train_images=1000)
    assert plan.lr == pytest.approx(0.0001) and plan.total_batch_size == 8
    cli.main(["plan", os.path.join(ROOT, "configs", "rtdetr_v2_r18vd.yml"), "--train-images", "1000"])
    assert "lr scaling                 none" in capsys.readouterr().out
