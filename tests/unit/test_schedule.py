import pytest

from jobs.schedule import lr_factor

PLAN = dict(max_iters=100, lr_policy="multistep", gamma=0.1, milestones_iters=[60, 90],
            warmup_iters=10, warmup_factor=0.001, min_lr_ratio=0.0)


@pytest.mark.parametrize("policy,iteration,expected", [
    ("multistep", 0, 0.001),
    ("multistep", 5, 0.001 + 0.999 * 0.5),
    ("multistep", 10, 1.0),
    ("multistep", 59, 1.0),
    ("multistep", 60, 0.1),
    ("multistep", 90, 0.01),
    ("cosine", 10, 0.5 * (1 + __import__("math").cos(__import__("math").pi * 0.1))),
    ("cosine", 50, 0.5),
    ("cosine", 100, 0.0),
    ("constant", 99, 1.0),
])
def test_lr_factor(policy, iteration, expected):
    assert lr_factor(iteration, dict(PLAN, lr_policy=policy)) == pytest.approx(expected)


def test_cosine_floor():
    assert lr_factor(100, dict(PLAN, lr_policy="cosine", min_lr_ratio=0.05)) == pytest.approx(0.05)
