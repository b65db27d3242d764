"""Is orch really installed? Exit 0 if so; else say what is missing (one line) and exit 1.

    python3 tools/installed.py [--extra test[,toolbox-test]] [torch==2.14.1 ...]

Used by demo.sh and tests/run.sh to decide whether to run pip. Importing ``orchestrator`` from
the repository root proves nothing (the source tree is importable, ``orch`` may still be missing),
so this looks at what pip installed: the ``orch`` command runs, and every distribution that
pyproject.toml requires (plus the extra's) is installed, at the pinned versions given.
Run as a file (``sys.path[0]`` is tools/, never the repository root) and from ``/``.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def requirements(extra: str | None) -> list[str]:
    """Requirement strings of pyproject.toml: the dependencies, plus the extras' (comma-separated)."""
    extras = [e for e in (extra or "").split(",") if e]
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        text = f.read()
    try:
        import tomllib
    except ImportError:  # Python 3.10: the two lists are simple enough to read by hand
        def array(key: str) -> list[str]:
            found = re.search(rf"(?m)^{re.escape(key)}\s*=\s*\[(.*?)\]", text, re.S)
            return re.findall(r'"([^"]+)"', found.group(1)) if found else []
        return array("dependencies") + [req for e in extras for req in array(e)]
    project = tomllib.loads(text)["project"]
    return list(project["dependencies"]) + [req for e in extras for req in project["optional-dependencies"][e]]


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def missing(extra: str | None, pins: list[str]) -> str | None:
    """Why orch is not ready, or None."""
    wanted = {"orch": None, **{normalise(_NAME.match(req).group(1)): None for req in requirements(extra)}}
    for pin in pins:
        name, _, pinned = pin.partition("==")
        wanted[normalise(name)] = pinned
    for name, pinned in wanted.items():
        try:
            have = version(name)
        except PackageNotFoundError:
            return f"{name} is not installed"
        if pinned and have.split("+")[0] != pinned:
            return f"{name} {have} is installed, orch pins {pinned}"
    command = shutil.which("orch")
    if command is None:
        return "the orch command is not on PATH"
    try:
        ran = subprocess.run([command, "--help"], cwd="/", capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"the orch command ({command}) does not run: {exc}"
    if ran.returncode != 0:
        return f"the orch command ({command}) does not run (exit code {ran.returncode})"
    return None


def main(argv: list[str]) -> int:
    extra = None
    if argv[:1] == ["--extra"]:
        extra, argv = argv[1], argv[2:]
    why = missing(extra, argv)
    if why:
        print(why, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
