"""Every shipped config plans and shows; the transformer-detector configs choose their LR scaling
rule explicitly (linear scaling breaks DETRs) and `orch plan` shows it."""
from __future__ import annotations

import os

import pytest
import yaml

from orchestrator import cli, config, modelspec

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(n for n in os.listdir(os.path.join(ROOT, "configs")) if n.endswith(".yml"))
# published recipes: (base lr, backbone lr_mult, weight decay, epochs, total batch)
DETR_RECIPES = {
    "rtdetr_v2_r18vd.yml": (1e-4, None, 1e-4, 120, 16),
    "rtdetr_v2_r50vd.yml": (1e-4, 0.1, 1e-4, 72, 16),
    "dfine_s.yml": (2.5e-4, 0.5, 1.25e-4, 130, 64),
    "deformable_detr_r50.yml": (2e-4, 0.1, 1e-4, 50, 32),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_plans_and_shows(name, capsys):
    path = os.path.join(ROOT, "configs", name)
    assert cli.main(["plan", path, "--train-images", "1000"]) == 0, capsys.readouterr().err
    assert "max iterations" in capsys.readouterr().out
    assert cli.main(["config", "show", path]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(DETR_RECIPES))
def test_detr_configs_carry_the_published_recipe_and_an_explicit_scaling_rule(name, capsys):
    path = os.path.join(ROOT, "configs", name)
    with open(path) as f:
        raw = yaml.safe_load(f)
    assert raw["optimizer"]["lr_scaling"] in ("none", "sqrt")  # written in the file, not a default
    data = config.load_config(path).data
    assert modelspec.is_detr(data["model"]["name"])
    lr, backbone_mult, wd, epochs, batch = DETR_RECIPES[name]
    opt = data["optimizer"]
    assert (opt["name"], opt["base_lr"], opt["weight_decay"], opt["clip_grad_norm"]) == ("adamw", lr, wd, 0.1)
    assert [g["lr_mult"] for g in opt["param_groups"] if "backbone" in g["pattern"]] == \
        ([backbone_mult] if backbone_mult else [])
    assert data["schedule"]["epochs"] == epochs and data["data"]["total_batch_size"] == batch
    # at another batch the lr stays the published one and the plan says why
    assert cli.main(["plan", path, "--train-images", "1000", "data.total_batch_size=8"]) == 0
    out = capsys.readouterr().out
    assert f"lr scaling                 {raw['optimizer']['lr_scaling']}" in out
    assert f"lr                         {lr:g}" in out or f"lr                         {lr}" in out
