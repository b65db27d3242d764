"""A missing optional dependency is one line naming the extra, before any work is done."""
from __future__ import annotations

import os
import subprocess
import sys
import pytest

from orchestrator import cli, extras

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_extras_match_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        optional = tomllib.load(f)["project"]["optional-dependencies"]
    for module, (dist, extra) in extras.EXTRAS.items():
        assert dist in optional[extra], f"pyproject's orch[{extra}] does not install {dist} (needed for {module})"
        assert dist in optional["test"], f"the test extra lacks {dist}"


def test_require_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what `import onnxruntime` sees when it is missing
    assert not extras.available("onnxruntime")
    with pytest.raises(extras.OrchError) as info:
        extras.require("onnxruntime", "orch export --check")
    assert str(info.value) == "orch export --check needs onnxruntime: pip install 'orch[export]'"


def test_export_check_without_onnxruntime_is_one_line_before_any_work(tmp_path):
    # A subprocess whose sitecustomize hides onnxruntime, as on a machine that installed plain `-e .`;
    # the checkpoint does not even exist: the dependency is checked first.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['onnxruntime'] = None\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), ROOT, os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "export", str(tmp_path / "missing.pth"),
                           "--check"], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == "orch: error: orch export --check needs onnxruntime: pip install 'orch[export]'\n"
    assert os.listdir(tmp_path) == ["site"]


def test_faster_backend_without_faster_coco_eval_names_the_extra(monkeypatch):
    pytest.importorskip("torch")
    from jobs import evaluate

    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)
    with pytest.raises(extras.OrchError, match=r"faster-coco-eval: pip install 'orch\[fast\]'"):
        evaluate._resolve_backend("faster")
    assert evaluate._resolve_backend("auto") == "pycocotools"   # auto falls back quietly
