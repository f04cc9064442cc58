"""One entry point for every data source, dispatched through one visible table."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from pipeline.data.amazon import load_amazon
from pipeline.data.dataset import Dataset
from pipeline.data.generic import load_generic
from pipeline.data.movielens import load_movielens
from pipeline.data.synthetic import synthesize

DATA_ENV = "HYBRIDREC_DATA"


def _synthetic(path: Path | None, **options: Any) -> Dataset:
    if path is not None:
        raise ValueError(f"the synthetic source takes no path (got {str(path)!r})")
    return synthesize(**options)


def _needs_path(loader: Callable[..., Dataset]) -> Callable[..., Dataset]:
    def load(path: Path | None, **options: Any) -> Dataset:
        if path is None:
            raise ValueError(f"{loader.__name__} needs a path")
        return loader(path, **options)

    return load


# source name -> loader(path, **options)
LOADERS: dict[str, Callable[..., Dataset]] = {
    "amazon": _needs_path(load_amazon),
    "movielens": _needs_path(load_movielens),
    "generic": _needs_path(load_generic),
    "synthetic": _synthetic,
}


def load_dataset(source: str, path: str | Path | None = None, **options: Any) -> Dataset:
    """Load `source` ('amazon', 'movielens', 'generic', 'synthetic') from `path`; options go to
    the source's loader (e.g. name=..., columns=... for generic, seed=... for synthetic)."""
    if source not in LOADERS:
        raise ValueError(f"unknown data source {source!r}; expected one of {sorted(LOADERS)}")
    return LOADERS[source](None if path is None else Path(path), **options)


def default_data_root() -> Path:
    """Where the shared datasets live: $HYBRIDREC_DATA, else <repo>/../shared/data."""
    configured = os.environ.get(DATA_ENV)
    if configured:
        return Path(configured)
    repo = Path(__file__).resolve().parents[2]
    return repo.parent / "shared" / "data"
