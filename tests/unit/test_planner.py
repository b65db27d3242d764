"""Planner tables: pure functions, no I/O."""
import pytest

from orchestrator import planner, schema
from orchestrator.planner import PlanError


@pytest.mark.parametrize("base_lr,base_batch,total,rule,expected", [
    (0.02, 16, 8, "linear", 0.01),      # mmdetection: 4 GPUs x 2 images
    (0.02, 16, 64, "linear", 0.08),     # 16 GPUs x 4 images
    (0.02, 16, 16, "linear", 0.02),
    (0.01, 16, 64, "sqrt", 0.02),
    (0.02, 16, 4, "sqrt", 0.01),
    (0.02, 16, 128, "none", 0.02),
])
def test_scale_lr(base_lr, base_batch, total, rule, expected):
    assert planner.scale_lr(base_lr, base_batch, total, rule) == pytest.approx(expected)


@pytest.mark.parametrize("gpus,per_node,nodes,expected", [
    (16, 8, None, (2, 8)),
    (8, 8, None, (1, 8)),
    (2, 8, None, (1, 2)),     # fewer GPUs than a node holds: one partial node
    (1, 8, None, (1, 1)),
    (32, 4, None, (8, 4)),
    (2, 1, None, (2, 1)),
    (12, 8, 3, (3, 4)),       # explicit nodes
])
def test_resolve_nodes(gpus, per_node, nodes, expected):
    assert planner.resolve_nodes(gpus, per_node, nodes) == expected


@pytest.mark.parametrize("gpus,per_node,nodes,fragment", [
    (12, 8, None, "--gpus 8 or --gpus 16"),
    (20, 8, None, "--gpus 16 or --gpus 24"),
    (10, 4, 3, "--gpus 9 or 12"),
])
def test_resolve_nodes_rejects_partial_nodes(gpus, per_node, nodes, fragment):
    with pytest.raises(PlanError, match=fragment.replace("-", r"\-")):
        planner.resolve_nodes(gpus, per_node, nodes)


@pytest.mark.parametrize("gpus,per_gpu,total,expected", [
    (4, 2, None, (2, 8)),
    (16, 4, None, (4, 64)),
    (8, 99, 64, (8, 64)),     # a total batch wins over batch_per_gpu
])
def test_resolve_batch(gpus, per_gpu, total, expected):
    assert planner.resolve_batch(gpus, per_gpu, total) == expected


def test_resolve_batch_uneven_total_proposes_neighbours():
    with pytest.raises(PlanError, match="total_batch_size=48 or 54"):
        planner.resolve_batch(6, 2, 50)


@pytest.mark.parametrize("images,total,expected", [
    (100, 8, 13), (96, 8, 12), (1, 64, 1), (117266, 16, 7330), (117266, 64, 1833),
])
def test_iters_per_epoch(images, total, expected):
    assert planner.iters_per_epoch(images, total) == expected


@pytest.mark.parametrize("epochs,ipe,expected", [
    (8, 100, 800), (0.5, 13, 6), (0.01, 13, 1), (0, 13, 0), (11, 1833, 20163),
])
def test_epochs_to_iters(epochs, ipe, expected):
    assert planner.epochs_to_iters(epochs, ipe) == expected


def config(**sections):
    cfg = schema.defaults()
    for dotted, value in sections.items():
        section, key = dotted.split("__")
        cfg[section][key] = value
    return cfg


@pytest.mark.parametrize("overrides,images,gpus,expected", [
    # mmdetection 1x on COCO train2017 (117266 images after filtering), 8 GPUs x 2
    ({}, 117266, 8, dict(total_batch_size=16, lr=0.02, iters_per_epoch=7330, max_iters=87960,
                         milestones_iters=[58640, 80630], checkpoint_period_iters=7330, nodes=1)),
    ({"data__batch_per_gpu": 4}, 117266, 16, dict(total_batch_size=64, lr=0.08, iters_per_epoch=1833,
                                                   max_iters=21996, nodes=2, gpus_per_node=8)),
    ({}, 8, 4, dict(total_batch_size=8, lr=0.01, iters_per_epoch=1, max_iters=12)),
    ({"schedule__max_iters": 100, "schedule__milestones_iters": [60, 90]}, 400, 1,
     dict(max_iters=100, milestones_iters=[60, 90], iters_per_epoch=200)),
    ({"schedule__checkpoint_every_iters": 25, "schedule__eval_every_epochs": None}, 400, 2,
     dict(checkpoint_period_iters=25, eval_period_iters=1200)),
    ({"schedule__warmup_epochs": 0.5}, 400, 2, dict(warmup_iters=50)),
    ({"optimizer__lr_scaling": "none"}, 400, 16, dict(lr=0.02)),
    ({"data__total_batch_size": 32}, 400, 8, dict(batch_per_gpu=4, lr=0.04)),
])
def test_make_plan(overrides, images, gpus, expected):
    plan = planner.make_plan(config(**overrides), images, gpus=gpus).to_dict()
    for key, value in expected.items():
        assert plan[key] == pytest.approx(value), key


def test_warmup_longer_than_run_is_capped_with_a_warning():
    plan = planner.make_plan(config(schedule__epochs=1), 16, gpus=1)
    assert plan.max_iters == 8 and plan.warmup_iters == 8
    assert any("warmup" in w for w in plan.warnings)


def test_stop_epoch_past_the_schedule_is_refused():
    cfg = config(schedule__epochs=12)
    cfg["data"]["augment"]["stop_epoch"] = 13
    with pytest.raises(PlanError, match=r"data.augment.stop_epoch = 13 is past the run's 12 epochs.*at most 12"):
        planner.make_plan(cfg, 16, gpus=1)
    cfg["data"]["augment"]["stop_epoch"] = 12
    assert planner.make_plan(cfg, 16, gpus=1).epochs == 12


def test_multiscale_is_refused_for_models_that_resize_inside():
    cfg = config(schedule__epochs=12)
    cfg["data"]["augment"]["multiscale"] = [480, 512]
    with pytest.raises(PlanError, match=r"data.augment.multiscale: ssdlite320_mobilenet_v3_large resizes inside"):
        planner.make_plan(cfg, 16, gpus=1)
    cfg["model"]["name"] = "rtdetr_v2_r18vd"
    assert planner.make_plan(cfg, 16, gpus=1).epochs == 12


def test_no_training_images_is_an_error():
    with pytest.raises(PlanError, match="no usable images"):
        planner.make_plan(config(), 0, gpus=1)


def test_plan_hash_ignores_resources_but_not_lr():
    cfg = config()
    plan = planner.make_plan(cfg, 100, gpus=2).to_dict()
    h = planner.plan_hash(plan, cfg)
    cfg2 = config(resources__partition="other", resources__time="1:00:00")
    assert planner.plan_hash(plan, cfg2) == h
    cfg3 = config(optimizer__base_lr=0.04)
    assert planner.plan_hash(planner.make_plan(cfg3, 100, gpus=2).to_dict(), cfg3) != h


def test_plan_json_has_the_promised_fields():
    fields = planner.make_plan(config(), 100, gpus=2).to_dict()
    for key in ("gpus", "nodes", "gpus_per_node", "batch_per_gpu", "total_batch_size", "base_lr",
                "base_batch_size", "lr", "train_images", "iters_per_epoch", "max_iters", "warmup_iters",
                "milestones_iters", "checkpoint_period_iters", "eval_period_iters"):
        assert key in fields


@pytest.mark.parametrize("gpus,per_node,nodes,fragment", [
    (16, 2, 4, "--nodes 4 × --gpus-per-node 2 hold 8 GPUs, not 16; use --gpus 8, or --nodes 8 (2 GPUs each), "
               "or --gpus-per-node 4"),
    (12, 4, 2, "use --gpus 8, or --nodes 3 (4 GPUs each), or --gpus-per-node 6"),
])
def test_nodes_and_gpus_per_node_that_contradict_the_gpu_count(gpus, per_node, nodes, fragment):
    with pytest.raises(PlanError) as err:
        planner.resolve_nodes(gpus, per_node, nodes)
    assert fragment in str(err.value)


def model(name, **extra):
    return {**schema.defaults()["model"], "name": name, **extra}


@pytest.mark.parametrize("model_cfg,batch,total,refused", [
    # measured with torchvision 0.29 (see orchestrator/modelspec.py): BatchNorm over a 1x1 map at batch 1
    (model("ssdlite320_mobilenet_v3_large"), 1, None, True),
    (model("ssdlite320_mobilenet_v3_large"), 4, 4, True),            # a total batch of 4 on 4 GPUs is 1 each
    (model("ssdlite320_mobilenet_v3_large", min_size=512), 1, None, True),
    (model("ssdlite320_mobilenet_v3_large", min_size=513), 1, None, False),
    (model("ssdlite320_mobilenet_v3_large"), 2, None, False),
    (model("ssd300_vgg16"), 1, None, False),                        # no BatchNorm at all
    (model("fasterrcnn_resnet50_fpn"), 1, None, False),             # 800 px: the deepest map is 25x25
    (model("fasterrcnn_resnet50_fpn", min_size=32), 1, None, True),
    (model("fasterrcnn_resnet50_fpn", min_size=32, init_checkpoint="w.pth"), 1, None, False),  # frozen BN
    (model("fcos_resnet50_fpn", min_size=64), 1, None, False),
])
def test_batch_of_one_is_refused_where_batchnorm_cannot_train(model_cfg, batch, total, refused):
    cfg = config(data__batch_per_gpu=batch, data__total_batch_size=total)
    cfg["model"] = model_cfg
    if not refused:
        assert planner.make_plan(cfg, 100, gpus=4).batch_per_gpu == (total or batch * 4) // 4
        return
    with pytest.raises(PlanError) as err:
        planner.make_plan(cfg, 100, gpus=4)
    message = str(err.value)
    assert message.startswith("data.batch_per_gpu = 1: " + model_cfg["name"])
    assert "Expected more than 1 value per channel" in message and "data.batch_per_gpu=2" in message


@pytest.mark.parametrize("scaling,derivation", [
    ("linear", "(= 0.02 × 64 / 16)"), ("sqrt", "(= 0.02 × sqrt(64 / 16))"), ("none", None)])
def test_plan_table_shows_the_lr_derivation_on_the_lr_row(scaling, derivation):
    plan = planner.make_plan(config(data__batch_per_gpu=4, optimizer__lr_scaling=scaling), 117266, gpus=16)
    lines = planner.format_plan(plan).splitlines()
    lr_row = next(line for line in lines if line.startswith("  lr  "))  # not "lr scaling"
    if derivation is None:
        assert "(=" not in planner.format_plan(plan)
    else:
        assert lr_row.endswith(derivation), lr_row
        assert sum(derivation in line for line in lines) == 1  # nowhere else (not under the last row)
