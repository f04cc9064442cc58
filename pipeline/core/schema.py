"""The base of every config model: unknown keys are errors and a loaded config never changes.

`PartsConfig` is the one config object of a component made of parts (COBRA, the two-tower): its
top-level fields plus one nested frozen dataclass per part, handed to that part as is. It may be
written nested (`beam: {tau: 2.0}`) or flat as a plain keyword list (`fusion_tau: 2.0`): a flat key
sets the field of that name in the one part that has it; RENAMED lists the flat names that differ
from the field's, DERIVED the part fields that fitting fills in (seeds, widths shared with another
part) and that may not be set. A part given as a mapping changes the component's default for that
part, field by field.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator


def problems(err: ValidationError, prefix: str = "params") -> list[str]:
    """One line per problem of a pydantic error: `  params.key: what is wrong`."""
    lines = []
    for e in err.errors():
        where = ".".join(str(x) for x in (prefix, *e["loc"]))
        if e["type"] == "extra_forbidden":
            what = "unknown parameter"
        elif e["type"] == "missing":
            what = "required parameter missing"
        else:
            what = f"{e['msg'].removeprefix('Value error, ')} (got {e.get('input')!r})"
        lines.append(f"  {where}: {what}")
    return lines


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PartsConfig(Strict):
    DERIVED: ClassVar[dict[str, set[str]]] = {}
    RENAMED: ClassVar[dict[str, tuple[str, str]]] = {}  # flat name -> (part, field)

    @classmethod
    def parts(cls) -> dict[str, type]:
        return {k: f.annotation for k, f in cls.model_fields.items() if dataclasses.is_dataclass(f.annotation)}

    @classmethod
    def flat_names(cls) -> dict[str, tuple[str, str]]:
        """Every flat key -> (part, field): the parts' own field names, and the renamed ones."""
        return _flat_names(cls)

    @classmethod
    def _build_flat_names(cls) -> dict[str, tuple[str, str]]:
        out: dict[str, tuple[str, str]] = dict(cls.RENAMED)
        renamed = set(cls.RENAMED.values())
        for part, kind in cls.parts().items():
            for f in dataclasses.fields(kind):
                if f.name not in cls.DERIVED.get(part, ()) and (part, f.name) not in renamed:
                    assert f.name not in out, f"{cls.__name__}: flat name {f.name!r} is in two parts; rename one"
                    out[f.name] = (part, f.name)
        return out

    @model_validator(mode="before")
    @classmethod
    def _nest_flat_keys(cls, raw: Any) -> Any:
        """Flat keys into their parts; unknown keys are left for the strict check to name."""
        if not isinstance(raw, dict):
            return raw
        top, parts, names = set(cls.model_fields), cls.parts(), cls.flat_names()
        out: dict[str, Any] = {}
        for key, value in raw.items():
            if key in parts and isinstance(value, dict):
                out[key] = cls._part_dict(key, cls.model_fields[key].default) | value
            elif key in top:
                out[key] = cls._part_dict(key, value) if key in parts else value
        for key, value in raw.items():
            if key in top:
                continue
            if key not in names:
                out[key] = value  # extra: the strict check reports it
                continue
            part, name = names[key]
            nested = out.setdefault(part, cls._part_dict(part, cls.model_fields[part].default))
            if not isinstance(nested, dict):
                raise ValueError(f"'{key}' is a field of '{part}', which is not given as a mapping")
            nested[name] = value
        for part, derived in cls.DERIVED.items():
            given = derived & set(out[part]) if isinstance(out.get(part), dict) else set()
            if given:
                raise ValueError(f"{part}.{sorted(given)[0]} is derived when fitting, not set")
        return out

    @classmethod
    def _part_dict(cls, part: str, value: Any) -> Any:
        """A part given as an object becomes a new mapping of its fields (the derived ones
        dropped), so that flat keys can be merged into it."""
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)
                    if f.name not in cls.DERIVED.get(part, ())}
        return value

    def __getattr__(self, key: str) -> Any:  # a part's field read by its flat name: `cfg.lr`
        try:
            return super().__getattr__(key)
        except AttributeError:
            names = type(self).flat_names() if not key.startswith("_") else {}
            if key not in names:
                raise
            part, name = names[key]
            return getattr(getattr(self, part), name)

    @classmethod
    def has(cls, key: str) -> bool:
        """Whether `key` is a top-level parameter or a part's field by its flat name."""
        return key in cls.model_fields or key in cls.flat_names()

    def get(self, key: str) -> Any:
        """One parameter by its flat name or a top-level one."""
        if not type(self).has(key):
            raise KeyError(f"{type(self).__name__} has no parameter named {key!r}")
        return getattr(self, key)  # a top-level field, or a part's through __getattr__

    def with_(self, **flat: Any) -> "PartsConfig":
        """A copy with some parameters changed, given flat or by part."""
        return type(self).model_validate(self.dump() | flat)

    def dump(self) -> dict[str, Any]:
        """JSON-ready and nested, without the derived fields: what a saved component stores."""
        out = {}
        for key in type(self).model_fields:
            value = getattr(self, key)
            if dataclasses.is_dataclass(value):
                value = {f.name: list(v) if isinstance(v := getattr(value, f.name), tuple) else v
                         for f in dataclasses.fields(value) if f.name not in type(self).DERIVED.get(key, ())}
            out[key] = value
        return out


@functools.lru_cache(maxsize=None)
def _flat_names(cls: type[PartsConfig]) -> dict[str, tuple[str, str]]:
    return cls._build_flat_names()


class Configured:
    """A component of one config object: `Component(config, name=...)` or `Component(name=...,
    **params)`, params flat or by part, checked by the class's `config_class`. Its parameters read
    as attributes by their flat names (`channel.beam_size`); they change with
    `configure(beam_size=50)`, which checks the new values, and assigning one as an attribute is an
    error rather than a silent no-op (`runtime_setting` makes the exceptions)."""

    config_class: ClassVar[type[PartsConfig]]
    default_name: ClassVar[str]
    config: PartsConfig

    def __init__(self, config: PartsConfig | None = None, /, *, name: str | None = None, **params: Any) -> None:
        if config is not None and params:
            raise TypeError(f"give the {self.config_class.__name__} or its parameters, not both")
        self.name = name or self.default_name
        self.config = config if config is not None else self.config_class.model_validate(params)

    def configure(self, **params: Any):
        self.config = self.config.with_(**params)
        return self

    def _params(self) -> dict[str, Any]:
        """What a saved component's params.json stores: its name and its config (nested); the
        constructor reads it back (and the flat form of files saved before the config objects)."""
        return {"name": self.name} | self.config.dump()

    def __getattr__(self, key: str) -> Any:  # only reached when the normal lookup fails
        config = self.__dict__.get("config")
        if config is None or key.startswith("_") or key.endswith("_"):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r}")
        try:
            return config.get(key)
        except KeyError:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        config = self.__dict__.get("config")
        descriptor = isinstance(getattr(type(self), key, None), property)
        if config is not None and not descriptor and key not in self.__dict__ and type(config).has(key):
            raise AttributeError(f"{key!r} is a parameter of {type(self).__name__}: change it with "
                                 f"configure({key}=...)")
        object.__setattr__(self, key, value)


def runtime_setting(key: str) -> property:
    """A parameter that stays assignable as an attribute: where and how a component runs (threads,
    progress bars, device), which pipeline/scale.py sets on a worker's copy before fitting it."""
    return property(lambda self: self.config.get(key), lambda self, value: self.configure(**{key: value}))
