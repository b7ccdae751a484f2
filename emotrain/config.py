"""YAML configs validated into dataclasses, with every path resolved once, at load time.

Configs are data: every knob lives in a YAML file (the ones the project ships are package data
under ``emotrain/configs/``, also reachable as ``configs/`` in a checkout) and is checked
against a dataclass when it is loaded, so a typo (``trian.lr``) or a wrong type
(``batch_size: "8"``) fails at start-up with the offending key named, not an hour into a
job. Command lines may override any leaf with a dotted key (``train.lr=3e-4``); the
value is parsed as YAML so numbers, booleans and lists work without extra syntax.

Paths. A field declared with :func:`path_field` holds a path; :func:`resolve_paths` makes it
absolute in one pass, so nothing downstream depends on the working directory:

- a relative path written inside a YAML file is relative to that file's folder;
- a relative path given on the command line (``--set data.shards=shards/x``) is relative to the
  working directory;
- a reference to another config (``model: ../model/audio_text_tiny.yaml``, or a section given as a
  string) may also be a packaged name (``model/audio_text_tiny``), see :func:`find_config`; a
  section given by reference is read and inlined, with its own paths relative to its own folder;
- a ``name_or_path`` field (a tokenizer, a pretrained encoder) is made absolute only when that
  folder exists, otherwise it stays a hub name such as ``bert-base-uncased``.

A config saved after loading (a run's ``config.yaml``) therefore holds only absolute paths and
works from any directory.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

T = TypeVar("T")


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``3e-4`` as a float (YAML 1.1 insists on ``3.0e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str) -> Any:
    """Parse YAML text safely (no object construction), numbers in any common notation."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader derives from SafeLoader


class ConfigError(ValueError):
    """A config value or key is invalid; the message names the dotted key."""


CONFIG_ROOT = Path(__file__).resolve().parent / "configs"
PATH_KIND = "emotrain_path"  # dataclass field metadata key, see path_field
PathKind = typing.Literal["path", "name_or_path", "config"]


def path_field(kind: PathKind = "path", **kwargs: Any) -> Any:
    """A dataclass field holding a path (or list / mapping of paths) that loading makes absolute."""
    metadata = {**kwargs.pop("metadata", {}), PATH_KIND: kind}
    return dataclasses.field(metadata=metadata, **kwargs)


def config_names(subdir: str = "") -> list[str]:
    """The packaged configs under ``subdir``, as the names :func:`find_config` accepts there
    (YAML without its suffix, DeepSpeed JSON with it)."""
    root = CONFIG_ROOT / subdir
    yaml_names = [str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml")]
    return sorted(yaml_names + [str(p.relative_to(root)) for p in root.rglob("*.json")])


def find_config(ref: str | Path, base: Path | None = None, subdir: str = "") -> Path:
    """The config file ``ref`` names: a path (relative to ``base``, default the working directory,
    with or without ``.yaml`` / ``.json``), else a packaged config by name (``demo/audio_text``, or
    ``ekman7`` with ``subdir="labels"``). Raises ConfigError listing the packaged names."""
    ref = Path(ref)
    base = Path.cwd() if base is None else base
    candidates = [ref] if ref.is_absolute() else [base / ref, CONFIG_ROOT / subdir / ref]
    for candidate in candidates:
        for path in (candidate, candidate.with_name(candidate.name + ".yaml"),
                     candidate.with_name(candidate.name + ".json")):
            if path.is_file():
                return Path(os.path.normpath(path.absolute()))
    known = ", ".join(config_names(subdir)) or "none"
    where = f" (relative to {base})" if not ref.is_absolute() else ""
    raise ConfigError(f"config file not found: {ref}{where}; packaged configs{' in ' + subdir if subdir else ''}: {known}")


def _resolve_one(value: Any, kind: str, base: Path) -> Any:
    if isinstance(value, list):
        return [_resolve_one(v, kind, base) for v in value]
    if isinstance(value, dict):
        return {k: _resolve_one(v, kind, base) for k, v in value.items()}
    if not isinstance(value, str) or not value:
        return value  # None, or a wrong type that validation reports with the key named
    if kind == "config":
        return str(find_config(value, base))
    if kind == "name_or_path":
        local = base / value
        return os.path.normpath(local.absolute()) if not Path(value).is_absolute() and local.exists() else value
    return value if Path(value).is_absolute() else os.path.normpath(base / value)


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass an annotation names (``Spec`` or ``Spec | None``), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        return inner[0] if len(inner) == 1 else None
    return None


def resolve_paths(cls: type, data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make every path in ``data`` (a mapping for dataclass ``cls``) absolute against ``base``; a
    section given as a string is read from the config it names and inlined. Returns a new mapping;
    absolute paths are left as they are, so a second pass (for command-line values) is harmless."""
    hints = typing.get_type_hints(cls)
    out = dict(data)
    for f in dataclasses.fields(cls):
        if f.name not in out:
            continue
        value = out[f.name]
        kind = f.metadata.get(PATH_KIND)
        nested = _dataclass_of(hints[f.name])
        if kind is not None:
            out[f.name] = _resolve_one(value, kind, base)
        elif nested is not None and isinstance(value, str):
            ref = find_config(value, base)
            out[f.name] = resolve_paths(nested, read_yaml(ref), ref.parent)
        elif nested is not None and isinstance(value, dict):
            out[f.name] = resolve_paths(nested, value, base)
    return out


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp``; build nested dataclasses."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {_type_name(tp)}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        key_tp, val_tp = args if args else (Any, Any)
        return {_coerce(k, key_tp, where): _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types are errors."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        known = ", ".join(sorted(fields))
        raise ConfigError(f"unknown key(s) {', '.join(prefix + k for k in unknown)} (known: {known})")
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(value, hints[name], key)
    missing = [
        n for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"missing required key(s) {', '.join(prefix + m for m in missing)}")
    try:
        obj = cls(**kwargs)
        validate = getattr(obj, "validate", None)
        if callable(validate):
            validate()
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(f"{where or cls.__name__}: {err}") from None
    return obj


def to_dict(obj: Any) -> Any:
    """The plain-data form of a config, as written into every run directory."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a nested mapping (values parsed as YAML)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        try:
            value = parse_yaml(raw) if raw != "" else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({err})") from None
        set_dotted(data, key.split("."), value, f"override {item!r}")
    return data


def set_dotted(data: dict[str, Any], parts: list[str], value: Any, what: str) -> None:
    """``data[a][b][c] = value`` for ``parts`` ``[a, b, c]``, creating sections on the way."""
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{what}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with a clear error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML ({err.problem or err.context})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_config(cls: type[T], path: str | Path | None, overrides: list[str] | None = None) -> T:
    """Load the config ``path`` names (a file, or a packaged name, see :func:`find_config`; None:
    start empty), resolve its paths against its folder, apply the dotted overrides (their paths
    against the working directory), and validate into ``cls``."""
    data: dict[str, Any] = {}
    if path is not None:
        file = find_config(path)
        data = resolve_paths(cls, read_yaml(file), file.parent)
    if overrides:
        # Only the overriding values are resolved against the working directory; what the file said
        # stays as it was resolved against the file (a hub name there must not turn into a local
        # folder that happens to exist where the command runs).
        resolved = resolve_paths(cls, apply_overrides({}, list(overrides)), Path.cwd())
        for item in overrides:  # each override replaces its key, with its value as resolved
            parts = item.partition("=")[0].split(".")
            value = resolved
            for part in parts:
                value = value[part]
            set_dotted(data, parts, value, f"override {item!r}")
    return from_dict(cls, data)
