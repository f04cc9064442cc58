"""Amazon 2014 5-core in the form of ../shared/data/amazon-*: `interactions.tsv` (user_id,
item_id, timestamp) or `sequences.tsv` (user_id, item_id, position), plus optional RecBole item
metadata in `original/*.item`."""
from __future__ import annotations

import csv
import html
import re
from pathlib import Path

import pandas as pd

from pipeline.data.dataset import Dataset, assemble
from pipeline.data.generic import parse_items, parse_log, read_table
from pipeline.data.validate import DataValidationError

# One quoted category inside a RecBole token_seq such as: 'Beauty', 'Makeup', "Women's"
_QUOTED = re.compile(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"")


def load_amazon(directory: str | Path, name: str | None = None) -> Dataset:
    """Load an Amazon 5-core folder; has_time is False for `sequences.tsv` (positions only)."""
    folder = Path(directory)
    timed = folder / "interactions.tsv"
    ordered = folder / "sequences.tsv"
    if timed.exists():
        log, has_time = parse_log(read_table(timed, sep="\t"), str(timed))
        if not has_time:
            raise DataValidationError(str(timed), "timestamp", "missing required column")
    elif ordered.exists():
        columns = {"timestamp": "position"}
        log, has_time = parse_log(read_table(ordered, sep="\t"), str(ordered), columns, position=True)
    else:
        raise FileNotFoundError(f"{folder}: no interactions.tsv or sequences.tsv")
    meta_files = sorted(folder.glob("original/*.item"))
    items = read_recbole_items(meta_files[0]) if meta_files else None
    return assemble(name or folder.name, log, items, has_time=has_time, has_text=items is not None)


def read_recbole_items(path: Path) -> pd.DataFrame:
    """Parse a RecBole atomic `.item` file (header `name:type` per column). Quoted fields may
    hold newlines and tabs, so it is read with the csv module. Categories become a
    '|'-joined path; HTML entities in text are unescaped."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    if not rows:
        raise DataValidationError(str(path), None, "empty file: no header and no rows")
    header = [column.split(":", 1)[0] for column in rows[0]]
    width = len(header)
    for number, row in enumerate(rows[1:], start=1):
        if len(row) != width:
            message = f"expected {width} tab-separated fields, got {len(row)}"
            raise DataValidationError(str(path), None, message, dict(zip(header, row)), number)
    frame = pd.DataFrame(rows[1:], columns=header, dtype=object)
    items = parse_items(frame, str(path))
    if "categories" in items.columns:
        items["categories"] = [category_path(text) for text in items["categories"]]
    for column in ("title", "brand", "categories"):
        if column in items.columns:
            items[column] = [html.unescape(text).strip() for text in items[column]]
    return items


def category_path(token_seq: str) -> str:
    """"'Beauty', 'Makeup', 'Face'" -> 'Beauty|Makeup|Face' (either quote style per token)."""
    parts = [single or double for single, double in _QUOTED.findall(token_seq)]
    if not parts and token_seq.strip():
        parts = [p.strip() for p in token_seq.split(",")]
    return "|".join(p.replace("|", "/").strip() for p in parts if p.strip())
