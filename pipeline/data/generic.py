"""Reading delimited/Parquet interaction logs and item tables into the parsed form that
`pipeline.data.dataset.assemble` takes. Used by the generic loader and the dataset-specific ones."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from pipeline.data.dataset import Dataset, assemble
from pipeline.data.validate import (
    parse_floats,
    parse_integers,
    parse_timestamps,
    require_columns,
    require_ids,
    require_rows,
    require_unique,
)

LOG_COLUMNS = ("user_id", "item_id", "timestamp", "value")
ITEM_META_COLUMNS = ("item_id", "title", "categories", "category", "brand", "price", "created_at")
_SEPARATORS = {".csv": ",", ".tsv": "\t", ".txt": "\t", ".dat": "::", ".data": "\t"}


def read_table(
    path: Path,
    sep: str | None = None,
    names: list[str] | None = None,
    encoding: str = "utf-8",
    quoting: int = csv.QUOTE_MINIMAL,
) -> pd.DataFrame:
    """A file as a frame: Parquet keeps its types; delimited text is read as strings (empty
    fields are null) with a header unless `names` is given. A multi-character separator such
    as '::' is rewritten to a tab first so the fast C parser can read it."""
    path = Path(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(path)
    sep = sep or _SEPARATORS.get(path.suffix.lower(), ",")
    source: Path | io.StringIO = path
    if len(sep) > 1:
        source = io.StringIO(path.read_text(encoding=encoding).replace(sep, "\t"))
        sep = "\t"
    return pd.read_csv(
        source,
        sep=sep,
        header=None if names else "infer",
        names=names,
        dtype=str,
        keep_default_na=False,
        na_values=[""],
        encoding=encoding,
        quoting=quoting,
    )


def parse_log(
    frame: pd.DataFrame,
    file: str,
    columns: Mapping[str, str] | None = None,
    timestamp_format: str | None = None,
    position: bool = False,
) -> tuple[pd.DataFrame, bool]:
    """Validate a raw log and return (log, has_time) with log columns user, item, timestamp
    (int64), optional value.

    columns maps canonical names (user_id, item_id, timestamp, value) to the file's names.
    position=True: the timestamp column holds integer positions (has_time False). Without a
    timestamp column, the file order within each user is the position.
    """
    names = _column_names(columns, frame)
    require_rows(frame, file)
    require_columns(frame, file, [names["user_id"], names["item_id"]])
    if "timestamp" in (columns or {}):
        require_columns(frame, file, [names["timestamp"]])
    require_ids(frame, file, [names["user_id"], names["item_id"]])
    log = pd.DataFrame(
        {"user": _id_strings(frame[names["user_id"]]), "item": _id_strings(frame[names["item_id"]])}
    )
    has_time = names["timestamp"] in frame.columns and not position
    if names["timestamp"] in frame.columns and position:
        log["timestamp"] = parse_integers(frame, file, names["timestamp"])
    elif has_time:
        log["timestamp"] = parse_timestamps(frame, file, names["timestamp"], timestamp_format)
    else:
        log["timestamp"] = log.groupby("user", sort=False).cumcount().to_numpy(dtype=np.int64)
    if names["value"] in frame.columns:
        log["value"] = parse_floats(frame, file, names["value"])
    what = "interaction (same user, item and timestamp)" if has_time else "interaction (same user, item and position)"
    require_unique(frame, file, ["user", "item", "timestamp"], what, parsed=log)
    return log, has_time


def _column_names(columns: Mapping[str, str] | None, frame: pd.DataFrame) -> dict[str, str]:
    unknown = sorted(set(columns or {}) - set(LOG_COLUMNS))
    if unknown:
        raise ValueError(f"unknown canonical column(s) {unknown}; expected some of {list(LOG_COLUMNS)}")
    return {name: (columns or {}).get(name, name) for name in LOG_COLUMNS}


def _id_strings(values: pd.Series) -> pd.Series:
    """Ids as str; integral floats (from Parquet) lose their '.0'."""
    if pd.api.types.is_float_dtype(values):
        array = values.to_numpy()
        if np.all(array == np.floor(array)):
            values = values.astype(np.int64)
    return values.astype(str).str.strip()


def parse_items(
    frame: pd.DataFrame, file: str, columns: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """Validate item metadata; returns column `item` (str) plus the known fields present
    (title, categories, category, brand as str, price float, created_at int seconds)."""
    unknown = sorted(set(columns or {}) - set(ITEM_META_COLUMNS))
    if unknown:
        raise ValueError(f"unknown item column(s) {unknown}; expected some of {list(ITEM_META_COLUMNS)}")
    names = {name: (columns or {}).get(name, name) for name in ITEM_META_COLUMNS}
    require_rows(frame, file)
    require_columns(frame, file, [names["item_id"]])
    require_ids(frame, file, [names["item_id"]])
    items = pd.DataFrame({"item": _id_strings(frame[names["item_id"]])})
    require_unique(frame, file, [names["item_id"]], "item id", parsed=frame.assign(**{names["item_id"]: items["item"]}))
    for field in ("title", "categories", "category", "brand"):
        if names[field] in frame.columns:
            values = frame[names[field]].astype(object)
            items[field] = values.where(values.notna(), "").map(str).to_numpy(dtype=object)
    if names["price"] in frame.columns:
        items["price"] = parse_floats(frame, file, names["price"])
    if names["created_at"] in frame.columns:
        present = frame[names["created_at"]].notna().to_numpy()
        created = np.full(len(frame), np.nan)
        created[present] = parse_timestamps(frame[present], file, names["created_at"])
        items["created_at"] = created
    return items


def load_generic(
    path: str | Path,
    columns: dict[str, str] | None = None,
    items_path: str | Path | None = None,
    item_columns: dict[str, str] | None = None,
    timestamp_format: str | None = None,
    name: str | None = None,
    sep: str | None = None,
) -> Dataset:
    """A CSV/TSV/Parquet interaction log (optionally with an item table) as a `Dataset`.

    columns / item_columns map canonical names to the file's column names. Without a
    timestamp column, rows are ordered by file order and has_time is False.
    """
    path = Path(path)
    log, has_time = parse_log(read_table(path, sep=sep), str(path), columns, timestamp_format)
    items = None
    if items_path is not None:
        items = parse_items(read_table(Path(items_path), sep=sep), str(items_path), item_columns)
    has_text = items is not None and any(c in items.columns for c in ("title", "categories", "brand"))
    return assemble(name or path.stem, log, items, has_time=has_time, has_text=has_text)
