"""Optional dependencies: checked before any work is done, refused in one line naming the extra.

    extras.require("onnxruntime", "orch export --check")
    → orch export --check needs onnxruntime: pip install 'orch[export]'

torch-free and cheap: :func:`importlib.util.find_spec` looks the module up without importing it.
``EXTRAS`` mirrors ``[project.optional-dependencies]`` in pyproject.toml (a test keeps them equal).
"""
from __future__ import annotations

import importlib.util

from orchestrator.errors import OrchError

# import name → (pip distribution, extra of orch that installs it)
EXTRAS: dict[str, tuple[str, str]] = {
    "onnxruntime": ("onnxruntime", "export"),
    "s3fs": ("s3fs", "s3"),
    "faster_coco_eval": ("faster-coco-eval", "fast"),
}


def available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module without a spec
        return False


def require(module: str, what: str) -> None:
    """Raise OrchError "``what`` needs ``dist``: pip install 'orch[extra]'" unless ``module`` is importable."""
    if available(module):
        return
    dist, extra = EXTRAS[module]
    raise OrchError(f"{what} needs {dist}: pip install 'orch[{extra}]'")
