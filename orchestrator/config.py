"""YAML → validated config: ``__include__`` layering, ``key.sub=value`` overrides, did-you-mean.

``load_config(path, overrides)`` returns a :class:`LoadedConfig` holding the resolved dict and,
for ``--explain``, which file or override set each key. Only ``yaml.safe_load`` is used: a
``!!python/...`` tag is an error, never executed.
"""
from __future__ import annotations

import copy
import difflib
import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from orchestrator import storage
from orchestrator.errors import OrchError
from orchestrator.schema import SCHEMA, Field, all_key_paths, defaults

INCLUDE_KEY = "__include__"
DEFAULTS_SOURCE = "<default>"
SECRET_WORDS = ("secret", "key", "token", "password", "passwd", "credential")
REDACTED = "***"
# config keys holding local paths that are made absolute (relative to the working directory)
PATH_KEYS = ("work_dir", "model.init_checkpoint", "data.train.ann_file", "data.train.img_dir",
             "data.val.ann_file", "data.val.img_dir")


class ConfigError(OrchError):
    """A config that cannot be used; the message names the file, the key, the value and the fix."""


@dataclass
class LoadedConfig:
    data: dict[str, Any]
    sources: dict[str, str] = field(default_factory=dict)  # dotted key -> file path or "override"
    path: str = ""

    def get(self, dotted: str) -> Any:
        return get_path(self.data, dotted)


def get_path(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        node = node[part]
    return node


# ---------------------------------------------------------------- reading and merging

def _read_yaml(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.constructor.ConstructorError as exc:
        raise ConfigError(f"{path}: {exc.problem} {exc.problem_mark or ''}".strip()
                          + " — only plain YAML is accepted (tags like !!python/... are never executed)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys (got {type(data).__name__})")
    return data


def _record_sources(data: Any, source: str, prefix: str, sources: dict[str, str]) -> None:
    if not isinstance(data, dict):
        return
    for key, value in data.items():
        path = f"{prefix}{key}"
        for stale in [k for k in sources if k.startswith(path + ".")]:
            if not isinstance(value, dict):
                del sources[stale]
        sources[path] = source
        _record_sources(value, source, path + ".", sources)


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge recursively; lists and scalars from ``top`` replace."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _load_layers(path: str, stack: tuple[str, ...], sources: dict[str, str]) -> dict[str, Any]:
    path = os.path.abspath(path)
    if path in stack:
        cycle = " -> ".join(os.path.relpath(p) for p in stack + (path,))
        raise ConfigError(f"include cycle: {cycle}; remove one of these __include__ entries")
    raw = _read_yaml(path)
    includes = raw.pop(INCLUDE_KEY, [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError(f"{path}: {INCLUDE_KEY} must be a list of file paths")
    merged: dict[str, Any] = {}
    for inc in includes:
        inc_path = inc if os.path.isabs(inc) else os.path.join(os.path.dirname(path), inc)
        if not os.path.exists(inc_path):
            raise ConfigError(f"{path}: {INCLUDE_KEY} entry {inc!r} not found (looked for {inc_path})")
        merged = deep_merge(merged, _load_layers(inc_path, stack + (path,), sources))
    _record_sources(raw, os.path.relpath(path), "", sources)
    return deep_merge(merged, raw)


# ---------------------------------------------------------------- overrides

def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value (e.g. optimizer.base_lr=0.01)")
    key, raw_value = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({exc})") from None
    return key, value


def apply_override(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


# ---------------------------------------------------------------- validation

def _did_you_mean(path: str) -> str:
    matches = difflib.get_close_matches(path, all_key_paths(), n=1, cutoff=0.6)
    if not matches:
        leaf = path.rsplit(".", 1)[-1]
        matches = [p for p in all_key_paths() if p.rsplit(".", 1)[-1] == leaf][:1]
    return f"; did you mean {matches[0]!r}?" if matches else ""


def _where(path: str, sources: dict[str, str]) -> str:
    source = sources.get(path)
    if source is None:
        return ""
    return "the command line" if source == "override" else source


def _type_name(types: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true/false", list: "a list",
             dict: "a mapping"}
    if types == (int, float):
        return "a number"
    return " or ".join(names.get(t, t.__name__) for t in types)


_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def coerce(spec: Field, value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` as a string; people mean a number."""
    if isinstance(value, str) and float in spec.types and _FLOAT_RE.match(value.strip()):
        return float(value)
    return value


def _check_field(path: str, spec: Field, value: Any, sources: dict[str, str]) -> None:
    where = _where(path, sources)
    prefix = f"{where}: " if where else ""
    if value is None:
        if spec.nullable or spec.default is None:
            return
        raise ConfigError(f"{prefix}{path} must be set ({_type_name(spec.types)}); it is null")
    ok = isinstance(value, spec.types) and not (isinstance(value, bool) and bool not in spec.types)
    if not ok:
        raise ConfigError(f"{prefix}{path} = {value!r} must be {_type_name(spec.types)}")
    if spec.choices is not None and value not in spec.choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in spec.choices], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{prefix}{path} = {value!r} is not one of {', '.join(map(str, spec.choices))}{hint}")
    if spec.check is not None:
        problem = spec.check(value)
        if problem:
            raise ConfigError(f"{prefix}{path} = {value!r} {problem}")


def validate(data: dict[str, Any], sources: dict[str, str], schema: dict[str, Any] = SCHEMA,
             prefix: str = "") -> None:
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in schema:
            leaves = _leaf_paths(value, path)
            shown = leaves[0] if len(leaves) == 1 else path  # `schedul.epochs=3` → name the whole key
            where = _where(path, sources)
            raise ConfigError(f"{where + ': ' if where else ''}unknown key {shown!r}{_did_you_mean(shown)}")
        spec = schema[key]
        if isinstance(spec, dict):
            if not isinstance(value, dict):
                where = _where(path, sources)
                raise ConfigError(f"{where + ': ' if where else ''}{path} must be a mapping of keys "
                                  f"({', '.join(spec)}), got {value!r}")
            validate(value, sources, spec, path + ".")
        else:
            value = data[key] = coerce(spec, value)
            _check_field(path, spec, value, sources)


def _leaf_paths(value: Any, prefix: str) -> list[str]:
    if not isinstance(value, dict) or not value:
        return [prefix]
    return [leaf for k, v in value.items() for leaf in _leaf_paths(v, f"{prefix}.{k}")]


# ---------------------------------------------------------------- the public entry point

def load_config(path: str, overrides: list[str] | None = None) -> LoadedConfig:
    sources: dict[str, str] = {}
    _record_sources(defaults(), DEFAULTS_SOURCE, "", sources)
    layered = _load_layers(path, (), sources)
    data = deep_merge(defaults(), layered)
    for text in overrides or []:
        key, value = parse_override(text)
        apply_override(data, key, value)
        _record_sources({key: value} if "." not in key else _nest(key, value), "override", "", sources)
    validate(data, sources)
    _resolve_paths(data)
    return LoadedConfig(data=data, sources=sources, path=os.path.abspath(path))


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    apply_override(out, dotted, value)
    return out


def _resolve_paths(data: dict[str, Any]) -> None:
    for dotted in PATH_KEYS:
        parts = dotted.split(".")
        node = data
        for part in parts[:-1]:
            node = node[part]
        if node.get(parts[-1]):
            node[parts[-1]] = storage.absolute(node[parts[-1]])


def redact_secrets(data: dict[str, Any]) -> dict[str, Any]:
    """A copy safe to write into run dirs and logs: secret-looking storage options become ***."""
    out = copy.deepcopy(data)

    def scrub(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (REDACTED if any(w in str(k).lower() for w in SECRET_WORDS) and not isinstance(v, dict)
                        else scrub(v)) for k, v in node.items()}
        return node

    if out.get("storage_options"):
        out["storage_options"] = scrub(out["storage_options"])
    return out


def to_yaml(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def explain(loaded: LoadedConfig) -> str:
    """Each leaf key with its value and the file (or override) that set it."""
    lines = []

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict) and value:
                walk(value, path + ".")
                continue
            source = loaded.sources.get(path, DEFAULTS_SOURCE)
            shown = REDACTED if path.startswith("storage_options") and value is not None else yaml.safe_dump(
                value, default_flow_style=True).strip().removesuffix("...").strip()
            lines.append((path, shown, "command line" if source == "override" else source))

    walk(loaded.data, "")
    width_key = max(len(p) for p, _, _ in lines)
    width_val = min(40, max(len(v) for _, v, _ in lines))
    return "\n".join(f"{p:<{width_key}}  {v:<{width_val}}  # {s}" for p, v, s in lines)
