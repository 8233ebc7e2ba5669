"""The model registry: every architecture variant is a name bound to a frozen config dataclass.

Modelled on timm's ``register_model`` and torchtune's two-level builders: a *family* knows how to build a module
from its config dataclass and how to count its forward FLOPs; a *preset* binds a name to one frozen config and
cites where its numbers come from. Families may also accept *parametric* names (``D<n>S<k>I``) through a parser.

Public interface (re-exported from :mod:`zoo`)::

    zoo.names("D2*")                 # registered names, optionally filtered by a glob pattern
    zoo.config("D8", width=128)      # the frozen, resolved config of a name with overrides
    zoo.build("D8", width=128)       # an nn.Module
    zoo.param_count(model)           # trainable parameters
    zoo.flops("D8")                  # analytic forward FLOPs per sample (multiply-add = 2 FLOPs)
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


class ZooError(ValueError):
    """A user-caused error (unknown name, bad override); its message is one clear sentence."""


@dataclass(frozen=True)
class Family:
    """A model family: how to build a module from a config and how to count its forward FLOPs per sample."""

    name: str
    config_cls: type
    build: Callable[[Any], nn.Module]
    flops: Callable[[Any], int]
    parse: Callable[[str], Any | None] | None = None  # parametric names -> config, or None if not this family's
    name_help: str = ""  # how parametric names look, for error messages
    # Parametric names a mistyped name may mean (its numbers in the family's grammar), offered as suggestions
    # beside the registered names: the names that build are more than the registered ones.
    candidates: Callable[[str], list[str]] | None = None
    example: str = ""  # a parametric name that builds, for messages


@dataclass(frozen=True)
class Entry:
    """A registered name: its family, its frozen config, and the parameter count recorded beside it."""

    name: str
    family: str
    config: Any
    doc: str = ""
    recorded_params: int | None = None  # the paper's count at this config, tested by the zoo contract tests


_FAMILIES: dict[str, Family] = {}
_ENTRIES: dict[str, Entry] = {}


def register_family(family: Family) -> Family:
    if family.name in _FAMILIES:
        raise RuntimeError(f"zoo family {family.name!r} registered twice")
    _FAMILIES[family.name] = family
    return family


def register(name: str, family: str, recorded_params: int | None = None):
    """Decorator for a preset: a function taking no arguments that returns the family's config dataclass.

    The function's docstring is kept as the entry's documentation (cite the paper table there).
    """

    def deco(fn: Callable[[], Any]):
        if name in _ENTRIES:
            raise RuntimeError(f"zoo name {name!r} registered twice")
        if family not in _FAMILIES:
            raise RuntimeError(f"zoo family {family!r} is not registered")
        cfg = fn()
        if not isinstance(cfg, _FAMILIES[family].config_cls):
            raise RuntimeError(f"preset {name!r} must return a {_FAMILIES[family].config_cls.__name__}")
        _ENTRIES[name] = Entry(name, family, cfg, (fn.__doc__ or "").strip(), recorded_params)
        return fn

    return deco


def families() -> list[str]:
    return sorted(_FAMILIES)


def names(pattern: str | None = None) -> list[str]:
    """Registered names in registration order, optionally filtered by a case-sensitive glob pattern."""
    return [n for n in _ENTRIES if pattern is None or fnmatch.fnmatchcase(n, pattern)]


def entry(name: str) -> Entry:
    """The registry entry of a name; parametric names (e.g. ``D3S5I``) resolve through their family's parser."""
    if not isinstance(name, str) or not name:
        raise ZooError(f"a zoo name must be a non-empty string, got {name!r}")
    if name in _ENTRIES:
        return _ENTRIES[name]
    for fam in _FAMILIES.values():
        if fam.parse is None:
            continue
        cfg = fam.parse(name)  # may raise ZooError for a malformed instance of its pattern
        if cfg is not None:
            return Entry(name, fam.name, cfg, f"parametric {fam.name} name")
    forms = parametric_forms()
    forms = f" (parametric forms: {forms})" if forms else ""
    raise ZooError(f"unknown zoo name {name!r}{closest_hint(name)}{forms}")


def _fold(name: str) -> str:
    """A name with the characters people confuse made equal: case, l and I, O and 0."""
    return name.casefold().replace("l", "i").replace("o", "0")


def closest_names(name: str, n: int = 3, cutoff: float = 0.5) -> list[str]:
    """Up to ``n`` names close to ``name``, best first: registered names and the parametric names the families
    build from its numbers (``D2S2l`` -> ``D2S2I``). Similarity is difflib's ratio on the name as typed or with
    confusable characters folded, whichever is higher; ties keep registration order."""
    pool = dict.fromkeys(_ENTRIES)
    for fam in _FAMILIES.values():
        if fam.candidates is not None:
            pool.update(dict.fromkeys(fam.candidates(name)))
    folded = _fold(name)

    def score(candidate: str) -> float:
        return max(difflib.SequenceMatcher(None, name, candidate).ratio(),
                   difflib.SequenceMatcher(None, folded, _fold(candidate)).ratio())

    scored = sorted(((score(c), c) for c in pool), key=lambda sc: -sc[0])
    return [c for s, c in scored if s >= cutoff][:n]


def closest_hint(name: str) -> str:
    """"; closest names: ..." for an error message about ``name`` ("closest registered names" when all are
    registered), or "" when nothing is close."""
    close = closest_names(name)
    if not close:
        return ""
    what = "closest registered names" if all(c in _ENTRIES for c in close) else "closest names"
    return f"; {what}: {', '.join(close)}"


def parametric_forms() -> str:
    """How the families' parametric names look ("D<n>, D<n>S<k>I, ... (block-sharing transformer); ...")."""
    return "; ".join(f.name_help for f in _FAMILIES.values() if f.name_help)


def parametric_example(pattern: str | None = None) -> str | None:
    """A parametric name that builds, preferably one matching the glob ``pattern`` (from the pattern's own numbers,
    e.g. ``D5*`` -> ``D5``); None when no family has parametric names."""
    fallback = None
    for fam in _FAMILIES.values():
        if fam.parse is None or not fam.example:
            continue
        fallback = fallback or fam.example
        if pattern is None:
            continue
        plain = "".join(ch for ch in pattern if ch not in "*?[]")
        for name in [fam.example, *(fam.candidates(plain) if fam.candidates else [])]:
            if fnmatch.fnmatchcase(name, pattern):
                return name
    return fallback


def decay_param_groups(model: nn.Module, base_lr: float, weight_decay: float) -> list[dict]:
    """Two AdamW groups by nanoGPT's rule: tensors of dim >= 2 (matmul and conv weights, embeddings) decay,
    biases and norm affines do not; empty groups are dropped."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "lr": base_lr, "weight_decay": weight_decay,
               "name": "decay"},
              {"params": [p for p in params if p.dim() < 2], "lr": base_lr, "weight_decay": 0.0, "name": "no_decay"}]
    return [g for g in groups if g["params"]]


def family_of(name: str) -> Family:
    return _FAMILIES[entry(name).family]


def get_family(family: str) -> Family:
    return _FAMILIES[family]


def type_ok(value: Any, annotation: Any) -> bool:
    """Whether ``value`` fits a dataclass field annotation (the simple types configs use)."""
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin in (tuple, list):
        args = typing.get_args(annotation)
        if not isinstance(value, (tuple, list)):
            return False
        if args and args[-1] is not Ellipsis and len(args) != len(value):
            return False
        elem = args[0] if args else Any
        return all(type_ok(v, elem) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def apply_overrides(cfg: Any, overrides: dict[str, Any], what: str = "config") -> Any:
    """``dataclasses.replace`` with checks: overrides that are None are dropped, unknown keys are rejected with a
    suggestion, and values must fit the field's type (ints are accepted for float fields and converted)."""
    hints = typing.get_type_hints(type(cfg))
    fields = {f.name for f in dataclasses.fields(cfg) if f.init}
    clean: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in fields:
            close = difflib.get_close_matches(key, sorted(fields), n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (valid keys: {', '.join(sorted(fields))})"
            raise ZooError(f"unknown override {key!r} for {what}{hint}")
        ann = hints[key]
        if not type_ok(value, ann):
            raise ZooError(
                f"override {key}={value!r} for {what} has type {type(value).__name__}, expected {type_name(ann)}"
            )
        if ann is float and isinstance(value, int):
            value = float(value)
        if isinstance(value, list):
            value = tuple(value)
        clean[key] = value
    try:
        return dataclasses.replace(cfg, **clean)
    except (ValueError, TypeError) as e:  # __post_init__ validation of the family config
        raise ZooError(f"invalid {what}: {e}") from None


def config(name: str, **overrides: Any) -> Any:
    """The frozen config of ``name`` with ``overrides`` applied (dataclass defaults < preset < overrides)."""
    e = entry(name)
    return apply_overrides(e.config, overrides, what=f"zoo model {name!r}")


def build(name: str, **overrides: Any) -> nn.Module:
    """Build the module registered as ``name``; overrides that are None are dropped, unknown keys rejected."""
    cfg = config(name, **overrides)
    return _FAMILIES[entry(name).family].build(cfg)


def build_from_config(family: str, cfg: Any) -> nn.Module:
    return _FAMILIES[family].build(cfg)


def param_count(model_or_name: nn.Module | str, **overrides: Any) -> int:
    """Trainable parameters; shared (tied) parameters are counted once. A name is built on the meta device."""
    if isinstance(model_or_name, str):
        with torch.device("meta"):
            model_or_name = build(model_or_name, **overrides)
    return sum(p.numel() for p in model_or_name.parameters() if p.requires_grad)


def flops(name: str, **overrides: Any) -> int:
    """Analytic forward FLOPs per sample at the config's input size (a multiply-add counts as 2 FLOPs)."""
    cfg = config(name, **overrides)
    return int(_FAMILIES[entry(name).family].flops(cfg))


def describe(name: str, **overrides: Any) -> dict[str, Any]:
    """Name, family, parameters (at the resolved config) and forward GFLOPs per sample: one row of `zoo list`."""
    e = entry(name)
    cfg = config(name, **overrides)
    with torch.device("meta"):
        model = _FAMILIES[e.family].build(cfg)
    row = {
        "name": name,
        "family": e.family,
        "params": param_count(model),
        "gflops": _FAMILIES[e.family].flops(cfg) / 1e9,
    }
    row.update(getattr(model, "summary_fields", lambda: {})())
    return row
