"""Typed `params` for every built-in component, checked when a config is loaded (issue 18).

A built-in kind declares its one config object as `config_class` (pipeline.core.schema.PartsConfig:
strict, nested parts, flat keys routed); a kind without one (a plug-in) is described by the
keyword arguments of its constructor, made into a strict pydantic model. Either way a typo in
`channels[2].params` fails at load with the file, the component and the key, before any data is
read; `params_model(cls)` is also what the generated config reference (docs/config-reference.md,
`python -m pipeline.params`) reads.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, TypeAdapter, ValidationError, create_model

from pipeline.config import ConfigError
from pipeline.core.schema import problems
from pipeline.registry import CHANNEL_KINDS, RANKER_KINDS, RERANKER_KINDS, import_object

SKIP = {"self", "name"}  # `name` is the component's config name, set by the builder


@functools.lru_cache(maxsize=None)
def params_model(cls: type) -> type | None:
    """The strict pydantic model of `cls.__init__`'s keyword parameters; None when the constructor
    takes **kwargs (it validates its own, e.g. the rule re-ranker's rerank.params models)."""
    declared = getattr(cls, "config_class", None)
    if declared is not None:  # the component takes one config object (e.g. CobraConfig)
        return declared
    sig = inspect.signature(cls.__init__)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    try:
        hints = typing.get_type_hints(cls.__init__, vars(sys.modules[cls.__module__]))
    except Exception:  # an annotation that does not resolve at runtime: names are still checked
        hints = {}
    fields: dict[str, Any] = {}
    for name, p in sig.parameters.items():
        if name in SKIP or p.kind is p.VAR_POSITIONAL:
            continue
        hint = hints.get(name, Any)
        try:
            TypeAdapter(hint)
        except Exception:  # e.g. a numpy array or a torch module: any value, the constructor checks it
            hint = Any
        fields[name] = (hint, ... if p.default is p.empty else p.default)
    return create_model(f"{cls.__name__}Params", __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True),
                        **fields)


def _stages(cfg) -> list[tuple[str, str, dict[str, Any], dict[str, str]]]:
    """(where, kind, params, kind table) of every component a config names."""
    out = [(f"channel '{c.name}'", c.kind, c.params, CHANNEL_KINDS) for c in cfg.channels]
    out += [("ranker", cfg.ranker.kind, cfg.ranker.params, RANKER_KINDS),
            ("rerank", cfg.rerank.kind, cfg.rerank.params, RERANKER_KINDS)]
    for arm in cfg.arms:
        for part, table in (("ranker", RANKER_KINDS), ("rerank", RERANKER_KINDS)):
            stage = getattr(arm, part)
            if stage is not None:
                out.append((f"arm '{arm.name}' {part}", stage.kind, stage.params, table))
    return out


def check_params(cfg, source: str = "<config>") -> None:
    """Every built-in component's params against its model; a ConfigError names the file, the
    component and each bad key. Plug-ins (`kind: plugin`, 'package.module:Class') are checked when
    they are built."""
    for where, kind, params, table in _stages(cfg):
        if kind not in table:
            continue
        cls = import_object(table[kind])
        model = params_model(cls)
        if model is None:
            continue
        try:
            model.model_validate(params)
        except ValidationError as err:
            raise ConfigError(f"{source}: {where}: bad parameters for {cls.__name__} (kind '{kind}')\n"
                              + "\n".join(problems(err))) from None


def reference() -> str:
    """The Markdown reference of every built-in kind's params: name, type, default."""
    out = ["# Component parameters", "",
           "Generated from the components' config classes by `python -m pipeline.params docs/config-reference.md`;",
           "these are the keys of a component's `params:` in a config, checked when the config loads.", ""]
    for what, table in (("channel", CHANNEL_KINDS), ("ranker", RANKER_KINDS), ("rerank", RERANKER_KINDS)):
        for kind, path in table.items():
            cls = import_object(path)
            out += [f"## {what} `{kind}` ({path})", ""]
            model = params_model(cls)
            if model is None:
                out += ["Takes its own validated params; see the class docstring.", ""]
                continue
            out += ["| param | type | default | meaning |", "|---|---|---|---|"]
            for name, f in model.model_fields.items():
                if dataclasses.is_dataclass(f.annotation):  # a nested part: one row per field
                    docs = _field_comments(f.annotation)
                    out += [f"| `{name}.{sub.name}` | `{_type_name(sub.type)}` | `{getattr(f.default, sub.name)!r}` | "
                            f"{docs.get(sub.name, '')} |"
                            for sub in dataclasses.fields(f.annotation) if sub.name not in _derived(cls, name)]
                    continue
                default = "required" if f.is_required() else repr(f.default)
                out.append(f"| `{name}` | `{_type_name(f.annotation)}` | `{default}` | {f.description or ''} |")
            out += _flat_note(cls) + [""]
    return "\n".join(out)


def _field_comments(kind: type) -> dict[str, str]:
    """A dataclass's one-line field docs: the comment after each field in its source."""
    try:
        lines = inspect.getsource(kind).splitlines()
    except (OSError, TypeError):
        return {}
    out = {}
    for line in lines:
        m = re.match(r"^\s+(\w+)\s*:[^#]*#\s*(.+)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip().replace("|", "or")
    return out


def _derived(cls: type, part: str) -> set[str]:
    """Fields of a nested part that fitting fills in (the config class's DERIVED), not listed."""
    return set(cls.config_class.DERIVED.get(part, ()))


def _flat_note(cls: type) -> list[str]:
    renamed = getattr(getattr(cls, "config_class", None), "RENAMED", None)
    if not renamed:
        return []
    pairs = ", ".join(f"`{flat}` = `{part}.{name}`" for flat, (part, name) in renamed.items())
    return ["", "A nested field may also be given flat by its own name (`lr: 0.004` for `train.lr`); "
            f"these flat names differ from the field's: {pairs}."]


def _type_name(hint: Any) -> str:
    text = getattr(hint, "__name__", None) if not typing.get_args(hint) else None
    return (text or str(hint).replace("typing.", "")).replace("|", "or")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(reference())
    else:
        sys.stdout.write(reference())
