"""YAML → validated config: ``__include__`` layering, ``key.sub=value`` overrides, did-you-mean.

``load_config(path, overrides)`` returns a :class:`LoadedConfig` holding the resolved dict and,
for ``--explain``, which file or override set each key. Only ``yaml.safe_load`` is used: a
``!!python/...`` tag is an error, never executed.
"""
from __future__ import annotations

import copy
import difflib
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from orchestrator import modelspec, storage
from orchestrator.errors import OrchError
from orchestrator.schema import EITHER_OR, SCHEMA, Field, all_key_paths, defaults

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

class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses a key written twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: SafeLoader reports it below
                    continue
                if first is not None:
                    where = f"lines {first} and {line}" if first != line else f"line {line}"
                    raise DuplicateKeyError(f"key {key!r} appears twice in one mapping ({where})")
                seen[key] = line
        return super().construct_mapping(node, deep)


class DuplicateKeyError(yaml.YAMLError):
    pass


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 — a SafeLoader subclass


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = _yaml_load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config path {path} is a directory; name a YAML file in it") from None
    except PermissionError:
        raise ConfigError(f"config file {path} cannot be read (permission denied); fix its permissions") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                          f"{exc.start}); save it as UTF-8") from None
    except DuplicateKeyError as exc:
        raise ConfigError(f"{path}: {exc}; keep one of them (YAML would silently drop the first)") from None
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


def _load_layers(path: str, stack: tuple[str, ...], sources: dict[str, str],
                 file_order: list[str]) -> dict[str, Any]:
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
        if os.path.isdir(inc_path):
            raise ConfigError(f"{path}: {INCLUDE_KEY} entry {inc!r} is a directory ({inc_path}); name a YAML file")
        merged = deep_merge(merged, _load_layers(inc_path, stack + (path,), sources, file_order))
    _record_sources(raw, os.path.relpath(path), "", sources)
    file_order.append(os.path.relpath(path))
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
        value = _yaml_load(raw_value) if raw_value.strip() else None
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

def _did_you_mean(path: str, siblings: Any = (), prefix: str = "", key: str = "") -> str:
    """A key next to the unknown one first (``resize.min_sise`` → ``resize.min_size``), else any key."""
    close = difflib.get_close_matches(key, list(siblings), n=1, cutoff=0.6) if key else []
    if close:
        return f"; did you mean {prefix + close[0] + path[len(prefix) + len(key):]!r}?"
    if "[" in path:  # inside a list: global paths would only suggest the list itself
        return ""
    matches = difflib.get_close_matches(path, all_key_paths(), n=1, cutoff=0.6)
    if not matches:
        leaf = path.rsplit(".", 1)[-1]
        matches = [p for p in all_key_paths() if p.rsplit(".", 1)[-1] == leaf][:1]
    return f"; did you mean {matches[0]!r}?" if matches else ""


def _where(path: str, sources: dict[str, str]) -> str:
    """The file (or command line) that set ``path`` or, for keys inside lists and maps, its nearest parent."""
    while path:
        source = sources.get(path)
        if source is not None:
            return "" if source == DEFAULTS_SOURCE else "the command line" if source == "override" else source
        path = path.rsplit("[", 1)[0] if path.endswith("]") else path.rsplit(".", 1)[0] if "." in path else ""
    return ""


def _prefix(path: str, sources: dict[str, str]) -> str:
    where = _where(path, sources)
    return f"{where}: " if where else ""


def _type_name(types: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true/false", list: "a list",
             dict: "a mapping"}
    if types == (int, float):
        return "a number"
    return " or ".join(names.get(t, t.__name__) for t in types)


_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def coerce(spec: Any, value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` as a string; people mean a number."""
    if isinstance(value, str) and float in spec.types and _FLOAT_RE.match(value.strip()):
        return float(value)
    return value


def _check_field(path: str, spec: Any, value: Any, sources: dict[str, str]) -> None:
    """Type, choices and range of one value; ``spec`` is a schema Field or a modelspec Kwarg."""
    prefix = _prefix(path, sources)
    if value is None:
        if spec.nullable or getattr(spec, "default", 0) is None:
            return
        raise ConfigError(f"{prefix}{path} must be set ({_type_name(spec.types)}); it is null")
    ok = isinstance(value, spec.types) and not (isinstance(value, bool) and bool not in spec.types)
    if not ok:
        raise ConfigError(f"{prefix}{path} = {value!r} must be {_type_name(spec.types)}")
    choices = getattr(spec, "choices", None)
    if choices is not None and value not in choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{prefix}{path} = {value!r} is not one of {', '.join(map(str, choices))}{hint}")
    if spec.check is not None:
        problem = spec.check(value)
        if problem:
            raise ConfigError(f"{prefix}{path} = {value!r} {problem}")


def _check_keys(path: str, spec: Field, value: Any, sources: dict[str, str]) -> None:
    """The keys of a ``Field(keys=...)`` mapping or of each ``Field(items=...)`` list entry."""
    if spec.keys is not None and isinstance(value, dict):
        entries = [(path, value, spec.keys)]
    elif spec.items is not None and isinstance(value, list):
        entries = [(f"{path}[{i}]", item, spec.items) for i, item in enumerate(value)]
    else:
        return
    for entry_path, entry, keys in entries:
        if not isinstance(entry, dict):
            raise ConfigError(f"{_prefix(entry_path, sources)}{entry_path} = {entry!r} must be a mapping with keys "
                              f"{', '.join(keys)}")
        validate_keys(entry, sources, keys, entry_path + ".")
        missing = [k for k in spec.required if entry.get(k) is None]
        if missing:
            raise ConfigError(f"{_prefix(entry_path, sources)}{entry_path} needs {', '.join(missing)} "
                              f"(valid keys: {', '.join(keys)}); got {entry!r}")


def validate_keys(data: dict[str, Any], sources: dict[str, str], schema: dict[str, Any] = SCHEMA,
                  prefix: str = "") -> None:
    """Unknown keys (with a did-you-mean), types and ranges, section by section."""
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in schema:
            leaves = _leaf_paths(value, path)
            shown = leaves[0] if len(leaves) == 1 else path  # `schedul.epochs=3` → name the whole key
            raise ConfigError(f"{_prefix(path, sources)}unknown key {shown!r}"
                              f"{_did_you_mean(shown, schema, prefix, str(key))}")
        spec = schema[key]
        if isinstance(spec, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{_prefix(path, sources)}{path} must be a mapping of keys "
                                  f"({', '.join(spec)}), got {value!r}")
            validate_keys(value, sources, spec, path + ".")
        else:
            value = data[key] = coerce(spec, value)
            _check_field(path, spec, value, sources)
            _check_keys(path, spec, value, sources)


def _check_finite(node: Any, path: str, sources: dict[str, str]) -> None:
    """``.inf`` and ``.nan`` are valid YAML floats but never a valid setting."""
    if isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{_prefix(path, sources)}{path} = {node} is not a finite number; write a number")
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in children:
        _check_finite(value, f"{path}[{key}]" if isinstance(node, list) else f"{path}.{key}" if path else str(key),
                      sources)


def _layer_rank(source: str | None, file_order: list[str]) -> int:
    if source is None or source == DEFAULTS_SOURCE:
        return -1
    if source == "override":
        return len(file_order) + 1
    return file_order.index(source) if source in file_order else 0


def _resolve_either_or(data: dict[str, Any], sources: dict[str, str], file_order: list[str]) -> None:
    """One layer sets one key of each pair; a later layer's choice clears the earlier other key."""
    for first, second, needs_one in EITHER_OR:
        a, b = get_path(data, first), get_path(data, second)
        if a is not None and b is not None:
            rank_a = _layer_rank(sources.get(first), file_order)
            rank_b = _layer_rank(sources.get(second), file_order)
            if rank_a == rank_b:
                raise ConfigError(f"{_prefix(first, sources)}{first} = {a!r} and {second} = {b!r} are both set; "
                                  f"they say the same thing two ways: keep one (set the other to null)")
            loser = first if rank_a < rank_b else second
            _set_path(data, loser, None)
            sources[loser] = sources.get(second if loser == first else first, DEFAULTS_SOURCE)
        elif a is None and b is None and needs_one:
            raise ConfigError(f"{_prefix(first, sources)}{first} and {second} are both null; set one of them")


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        node = node[part]
    node[leaf] = value


def _check_model(model: dict[str, Any], sources: dict[str, str]) -> None:
    """What the job's model builder would refuse, from :mod:`orchestrator.modelspec`."""
    name = model["name"]
    spec = modelspec.MODELS[name]
    kwargs = model.get("kwargs") or {}
    if spec.family == modelspec.DETR_FAMILY:
        _check_detr_kwargs(name, kwargs, sources)
        kwargs = {}  # the table checked them; the torchvision checks below do not apply
    for key, value in kwargs.items():
        path = f"model.kwargs.{key}"
        if key in ("min_size", "max_size", "trainable_backbone_layers"):
            raise ConfigError(f"{_prefix(path, sources)}{path}: set model.{key} instead of model.kwargs.{key}")
        if key not in spec.kwargs:
            close = difflib.get_close_matches(str(key), list(spec.kwargs), n=1, cutoff=0.6)
            hint = (f"; did you mean 'model.kwargs.{close[0]}'?" if close
                    else "; valid keys are " + ", ".join(spec.kwargs))
            raise ConfigError(f"{_prefix(path, sources)}{name} does not take {path}{hint} "
                              f"(torchvision {spec.family} keywords with plain values)")
        kwargs[key] = coerce(spec.kwargs[key], value)
        _check_field(path, spec.kwargs[key], kwargs[key], sources)
    layers = model.get("trainable_backbone_layers")
    if layers is not None and layers not in spec.trainable_layers:
        path = "model.trainable_backbone_layers"
        allowed = (f"{min(spec.trainable_layers)} to {max(spec.trainable_layers)}" if len(spec.trainable_layers) > 1
                   else f"{spec.trainable_layers[0]} (all layers) or null" if spec.trainable_layers else "null")
        extra = "" if len(spec.trainable_layers) > 1 else \
            "; to freeze backbone stages use an optimizer.param_groups rule with lr_mult 0"
        raise ConfigError(f"{_prefix(path, sources)}{path} = {layers} is out of range for {name}: use {allowed}{extra}")
    if model.get("frozen_bn") and not spec.can_freeze_bn:
        path = "model.frozen_bn"
        raise ConfigError(f"{_prefix(path, sources)}{path} = true: {name} keeps trainable BatchNorm in torchvision; "
                          "set it to false or null")
    if spec.square_input and model.get("min_size") and model.get("max_size") \
            and model["min_size"] != model["max_size"]:
        path = "model.max_size"
        raise ConfigError(f"{_prefix(path, sources)}model.min_size = {model['min_size']} and {path} = "
                          f"{model['max_size']}: {name} resizes to one square size; set min_size only")


def _check_detr_kwargs(name: str, kwargs: dict[str, Any], sources: dict[str, str]) -> None:
    """model.kwargs of a transformer detector: numbers of its table entry, each of the table's kind."""
    from orchestrator import detr_table

    try:
        numbers, backbone = detr_table.arch_kwargs(name, None)
        detr_table.arch_kwargs(name, kwargs)
    except OrchError as exc:
        path = "model.kwargs"
        raise ConfigError(f"{_prefix(path, sources)}{exc}") from None
    for key, value in kwargs.items():
        if key == "backbone":
            pairs = [(f"model.kwargs.backbone.{k}", backbone[k], v) for k, v in value.items()]
        else:
            pairs = [(f"model.kwargs.{key}", numbers[key], value)]
        for path, table_value, new_value in pairs:
            if table_value is not None and _kind(new_value) != _kind(table_value):
                raise ConfigError(f"{_prefix(path, sources)}{path} = {new_value!r} must be a {_kind(table_value)} "
                                  f"like {name}'s published value {table_value!r}")


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {list: "list", str: "string", dict: "mapping"}.get(type(value), type(value).__name__)


def validate(data: dict[str, Any], sources: dict[str, str], file_order: list[str] | None = None) -> None:
    """Everything the job would reject, rejected now: keys, types, ranges, pairs and model kwargs.

    ``file_order`` lists the config files in the order they were layered (later wins); keys set by
    ``sources`` "override" come after every file.
    """
    _check_finite(data, "", sources)
    validate_keys(data, sources)
    _resolve_either_or(data, sources, list(file_order or []))
    _check_model(data["model"], sources)
    _check_trainer(data["trainer"], sources)


def _check_trainer(trainer: dict[str, Any], sources: dict[str, str]) -> None:
    """``trainer.kind`` names a kind (did-you-mean), and the other keys are that kind's (orchestrator.kinds)."""
    from orchestrator import kinds  # torch-free, pure modules

    kind = trainer.get("kind", kinds.BUILTIN)
    source = _where("trainer.kind", sources) or "the config"
    if not isinstance(kind, str) or kind not in kinds.KIND_NAMES:
        close = difflib.get_close_matches(str(kind), kinds.KIND_NAMES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{source}: trainer.kind = {kind!r} is not one of {', '.join(kinds.KIND_NAMES)}{hint}")
    if kind == kinds.BUILTIN:
        extra = sorted(k for k in trainer if k != "kind")
        if extra:
            raise ConfigError(f"{_where('trainer.' + extra[0], sources) or source}: trainer.{extra[0]} is not a key of "
                              f"the built-in trainer (trainer.kind = 'orch' takes no other keys); set trainer.kind to "
                              f"the toolbox it belongs to ({', '.join(kinds.KINDS)})")
        return
    module = kinds.get(kind, source)
    kinds.base.check_keys(trainer, kind, module.KEYS, module.REQUIRED, source)


def _leaf_paths(value: Any, prefix: str) -> list[str]:
    if not isinstance(value, dict) or not value:
        return [prefix]
    return [leaf for k, v in value.items() for leaf in _leaf_paths(v, f"{prefix}.{k}")]


# ---------------------------------------------------------------- the public entry point

def load_config(path: str, overrides: list[str] | None = None) -> LoadedConfig:
    sources: dict[str, str] = {}
    file_order: list[str] = []
    _record_sources(defaults(), DEFAULTS_SOURCE, "", sources)
    layered = _load_layers(path, (), sources, file_order)
    if not layered:
        raise ConfigError(f"config file {path} is empty (or only comments); start from one of configs/*.yml, "
                          "e.g. `__include__: [base/runtime.yml]` plus the model and data keys")
    data = deep_merge(defaults(), layered)
    for text in overrides or []:
        key, value = parse_override(text)
        apply_override(data, key, value)
        _record_sources({key: value} if "." not in key else _nest(key, value), "override", "", sources)
    validate(data, sources, file_order)
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
