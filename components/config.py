"""YAML configs: inheritance through `_base_`, `a.b=value` overrides, and strict typed loading.

Every default lives in `configs/base.yaml`; experiment and profile files are minimal diffs on top of it
(`_base_: base.yaml`, or a list of bases merged left to right). The merged tree is turned into frozen
dataclasses by `build_dataclass`, which rejects unknown keys, missing keys and wrongly typed values with
the dotted path of the offending field, so a misspelt option is an error instead of a silent default.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import yaml

BASE_KEY = "_base_"
T = TypeVar("T")


class ConfigError(ValueError):
    """A config file, override or value does not match what the schema expects."""


def builtin_config_dir() -> Path:
    """Folder of the YAML configs shipped inside the package (`configs/` in the repository)."""
    return Path(str(resources.files("bifusion.configs")))


def resolve_config_path(ref: str | Path, relative_to: Path | None = None) -> Path:
    """Find a config file from a path, a path relative to another config, or a built-in name like `demo`."""
    ref_path = Path(ref)
    candidates = []
    if relative_to is not None and not ref_path.is_absolute():
        candidates.append(relative_to / ref_path)
    candidates.append(ref_path)
    builtin = builtin_config_dir()
    candidates.append(builtin / ref_path)
    if ref_path.suffix not in (".yaml", ".yml"):
        candidates.append(builtin / f"{ref}.yaml")
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    names = sorted(str(p.relative_to(builtin).with_suffix("")) for p in builtin.rglob("*.yaml"))
    raise ConfigError(f"config '{ref}' not found (looked in {[str(c) for c in candidates]}); built-in configs: {names}")


def _read_yaml_mapping(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def deep_merge(base: Mapping[str, Any], diff: Mapping[str, Any]) -> dict[str, Any]:
    """Merge `diff` into a copy of `base`: mappings merge key by key, everything else is replaced."""
    merged = dict(base)
    for key, value in diff.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def config_chain(ref: str | Path, relative_to: Path | None = None, _seen: tuple[Path, ...] = ()) -> list[Path]:
    """Files behind one config, bases first (its `_base_` chain flattened depth-first, left to right)."""
    path = resolve_config_path(ref, relative_to)
    if path in _seen:
        cycle = " -> ".join(str(p) for p in (*_seen, path))
        raise ConfigError(f"config inheritance cycle: {cycle}")
    bases = _read_yaml_mapping(path).get(BASE_KEY, [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: '{BASE_KEY}' must be a file name or a list of file names")
    chain: list[Path] = []
    for base in bases:
        chain += config_chain(base, path.parent, (*_seen, path))
    return [*chain, path]


def load_tree(refs: Sequence[str | Path]) -> dict[str, Any]:
    """Merge configs left to right into one plain tree.

    The chains are concatenated and a file already merged is not merged again: loading
    `[3d_mv, demo]` where both inherit `base` gives base -> 3d_sv -> 3d_mv -> demo, so a profile
    overlay never resets an experiment's diffs back to the base values.
    """
    files: list[Path] = []
    for ref in refs:
        files += [p for p in config_chain(ref) if p not in files]
    tree: dict[str, Any] = {}
    for path in files:
        data = _read_yaml_mapping(path)
        data.pop(BASE_KEY, None)
        tree = deep_merge(tree, data)
    return tree


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into its key path and a YAML-typed value (`1`, `true`, `null`, `[1, 2]`, text)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{text}' must look like section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML: {exc}") from exc
    return key.strip().split("."), value


def apply_overrides(tree: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply `a.b=value` overrides; a key that does not exist in the tree is an error, not a new option."""
    result = json.loads(json.dumps(tree))
    for text in overrides:
        keys, value = parse_override(text)
        node = result
        for depth, key in enumerate(keys):
            if not isinstance(node, dict) or key not in node:
                where = ".".join(keys[:depth]) or "<top level>"
                options = list(node) if isinstance(node, dict) else []
                hint = difflib.get_close_matches(key, options, n=1)
                suggestion = f"; did you mean '{hint[0]}'?" if hint else f"; known keys: {sorted(options)}"
                raise ConfigError(f"override '{text}': no key '{key}' under {where}{suggestion}")
            if depth == len(keys) - 1:
                node[key] = value
            else:
                node = node[key]
    return result


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check `value` against the annotation `tp` and convert containers; raise ConfigError naming `path`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{path}: must not be null (expected {_type_name(tp)})")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {value!r} matches none of {_type_name(tp)}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{path}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item_type = args[0] if args else Any
        items = [_convert(v, item_type, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        key_type, value_type = args or (str, Any)
        return {_convert(k, key_type, f"{path}.<key>"): _convert(v, value_type, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, path)
    if value is None:
        raise ConfigError(f"{path}: must not be null (expected {_type_name(tp)})")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected text, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported schema type {_type_name(tp)}")


def build_dataclass(cls: type[T], data: Any, path: str = "") -> T:
    """Build dataclass `cls` from a plain tree; unknown, missing or mistyped fields raise ConfigError."""
    where = path or "<top level>"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = unknown[0]
        hint = difflib.get_close_matches(key, list(fields), n=1)
        suggestion = f"; did you mean '{hint[0]}'?" if hint else f"; known keys: {sorted(fields)}"
        raise ConfigError(f"{where}: unknown key '{key}'{suggestion}")
    values = {}
    for name, field in fields.items():
        child = f"{path}.{name}" if path else name
        if name not in data:
            if field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING:
                continue
            raise ConfigError(f"{child}: missing (every option needs a value in configs/base.yaml)")
        values[name] = _convert(data[name], hints[name], child)
    return cls(**values)


def to_tree(obj: Any) -> Any:
    """Plain (YAML/JSON-ready) tree of a config dataclass."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_tree(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_tree(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_tree(v) for k, v in obj.items()}
    return obj


def to_yaml(obj: Any) -> str:
    """Readable YAML of a config (dataclass or tree), keys in schema order."""
    return yaml.safe_dump(to_tree(obj), sort_keys=False)


def fingerprint(*parts: Any) -> str:
    """Short stable hash of config sections and inputs; names output folders so re-runs find their work."""
    canonical = json.dumps([to_tree(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{'a': {'b': 1}}` -> `{'a.b': 1}`; lists stay values (used for MLflow params)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat
