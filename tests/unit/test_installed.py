"""tools/installed.py: demo.sh and tests/run.sh install unless pip really installed orch."""
from __future__ import annotations

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "tools", "installed.py")


def installed(*args: str, path: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if path is not None:
        env["PATH"] = path
    return subprocess.run([sys.executable, SCRIPT, *args], cwd="/", env=env, capture_output=True, text=True,
                          timeout=120)


def pins(script: str) -> list[str]:
    with open(os.path.join(ROOT, script)) as f:
        return re.search(r'^PINS="([^"]+)"$', f.read(), re.M).group(1).split()


def test_without_the_orch_command_it_says_install_though_the_source_tree_imports():
    no_orch = os.path.dirname(sys.executable) + ":/usr/bin:/bin"
    no_orch = ":".join(d for d in no_orch.split(":") if not os.path.exists(os.path.join(d, "orch")))
    source_tree = subprocess.run([sys.executable, "-c", "import orchestrator"], cwd=ROOT, capture_output=True,
                                 env={**os.environ, "PATH": no_orch})
    assert source_tree.returncode == 0   # what demo.sh used to take for "installed"
    done = installed(path=no_orch)
    assert done.returncode == 1 and done.stderr == "the orch command is not on PATH\n"


def test_a_wrong_pin_says_install():
    done = installed("torch==0.0.1")
    assert done.returncode == 1 and re.fullmatch(r"torch \S+ is installed, orch pins 0.0.1\n", done.stderr)


def test_a_missing_distribution_says_install():
    done = installed("surely-not-installed-orch-dep==1.0")
    assert done.returncode == 1 and done.stderr == "surely-not-installed-orch-dep is not installed\n"


def test_demo_and_tests_pin_the_same_versions_and_this_machine_has_them():
    assert pins("demo.sh") == pins("tests/run.sh") == ["torch==2.14.1", "torchvision==0.29.1"]
    done = installed("--extra", "test", *pins("tests/run.sh"))
    assert done.returncode == 0, done.stderr
