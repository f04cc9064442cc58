"""Input checks for the data layer.

Every check raises `DataValidationError` naming the file, the column and an example offending
row, and runs before anything is written. Row numbers count data rows from 1 (a header line is
not counted), so row 1 is the first record of the file.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

# Unix seconds beyond this magnitude (about the year 5138) are treated as a unit mistake.
MAX_ABS_SECONDS = 100_000_000_000
TIMESTAMP_FORMATS_HELP = "unix seconds (int or float) or an ISO 8601 date string"


class DataValidationError(ValueError):
    """A data file that cannot be turned into the canonical tables."""

    def __init__(
        self,
        file: str,
        column: str | None,
        message: str,
        row: dict | None = None,
        row_number: int | None = None,
    ) -> None:
        self.file = str(file)
        self.column = column
        self.message = message
        self.row = row
        self.row_number = row_number
        super().__init__(self.__str__())

    def __str__(self) -> str:
        text = f"{self.file}: "
        if self.column is not None:
            text += f"column '{self.column}': "
        text += self.message
        if self.row is not None:
            text += f" (example row {self.row_number}: {self.row})"
        return text


def example_row(frame: pd.DataFrame, position: int) -> tuple[dict[str, Any], int]:
    """The record at `position` (0-based) as a plain dict, with its 1-based row number (taken
    from an integer index, so a filtered frame still reports the file's row number)."""
    record = frame.iloc[position]
    row = {str(k): _plain(v) for k, v in record.items()}
    label = frame.index[position]
    number = int(label) + 1 if pd.api.types.is_integer_dtype(frame.index) else position + 1
    return row, number


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def _fail(frame: pd.DataFrame, file: str, column: str | None, message: str, bad: np.ndarray) -> None:
    """Raise for the first True position of the boolean mask `bad`, if any."""
    positions = np.flatnonzero(bad)
    if positions.size == 0:
        return
    row, number = example_row(frame, int(positions[0]))
    count = f" ({positions.size} rows)" if positions.size > 1 else ""
    raise DataValidationError(file, column, message + count, row, number)


def require_rows(frame: pd.DataFrame, file: str) -> None:
    """The file must hold at least one data row."""
    if len(frame) == 0:
        header = ", ".join(str(c) for c in frame.columns) or "none"
        raise DataValidationError(file, None, f"empty file: no data rows (columns: {header})")


def require_columns(frame: pd.DataFrame, file: str, required: Sequence[str]) -> None:
    """Every name in `required` must be a column of `frame`."""
    for column in required:
        if column not in frame.columns:
            found = [str(c) for c in frame.columns]
            row, number = example_row(frame, 0) if len(frame) else (None, None)
            raise DataValidationError(
                file, column, f"missing required column; the file has {found}", row, number
            )


def require_ids(frame: pd.DataFrame, file: str, columns: Sequence[str]) -> None:
    """Id columns must have no nulls and no empty strings."""
    for column in columns:
        values = frame[column]
        bad = values.isna().to_numpy()
        if not pd.api.types.is_numeric_dtype(values):
            text = values.astype(object).where(~bad, "")
            bad = bad | (text.map(lambda v: str(v).strip() == "").to_numpy(dtype=bool))
        _fail(frame, file, column, "null or empty id", bad)


def parse_integers(frame: pd.DataFrame, file: str, column: str) -> np.ndarray:
    """Integer column (e.g. a position); floats with a fractional part or text are rejected."""
    numbers = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(numbers) | (numbers != np.floor(numbers))
    _fail(frame, file, column, "wrong type: expected an integer", bad)
    return numbers.astype(np.int64)


def parse_floats(frame: pd.DataFrame, file: str, column: str) -> np.ndarray:
    """Numeric column where missing values (null or empty) become nan; text is rejected."""
    values = frame[column]
    if pd.api.types.is_numeric_dtype(values):
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    text = values.astype(object).where(values.notna(), "")
    blank = text.map(lambda v: str(v).strip() == "").to_numpy(dtype=bool)
    numbers = pd.to_numeric(text.where(~blank, np.nan), errors="coerce").to_numpy(np.float64)
    bad = np.isnan(numbers) & ~blank
    _fail(frame, file, column, "wrong type: expected a number", bad)
    return numbers


def parse_timestamps(
    frame: pd.DataFrame, file: str, column: str, timestamp_format: str | None = None
) -> np.ndarray:
    """Timestamps as int64 unix seconds.

    `timestamp_format`: None (auto: numbers are unix seconds, text is ISO 8601), 'unix',
    'unix_ms', or a strftime pattern such as '%d/%m/%Y'.
    """
    values = frame[column]
    seconds = _to_seconds(values, timestamp_format)
    bad = ~np.isfinite(seconds)
    _fail(frame, file, column, f"bad timestamp: does not parse as {_expected(timestamp_format)}", bad)
    huge = np.abs(seconds) >= MAX_ABS_SECONDS
    hint = " (milliseconds? pass timestamp_format='unix_ms')"
    _fail(frame, file, column, "bad timestamp: out of range for unix seconds" + hint, huge)
    return np.floor(seconds).astype(np.int64)


def _expected(timestamp_format: str | None) -> str:
    if timestamp_format is None:
        return TIMESTAMP_FORMATS_HELP
    return f"timestamp_format={timestamp_format!r}"


def _to_seconds(values: pd.Series, timestamp_format: str | None) -> np.ndarray:
    """Float seconds with nan where a value does not parse."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return _datetime_seconds(pd.to_datetime(values, utc=True))
    scale = 1000.0 if timestamp_format == "unix_ms" else 1.0
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
    if timestamp_format in ("unix", "unix_ms"):
        return numbers / scale
    if pd.api.types.is_numeric_dtype(values) and timestamp_format is None:
        return numbers
    text = values.astype(object).where(values.notna(), None)
    todo = np.isnan(numbers) if timestamp_format is None else np.ones(len(values), dtype=bool)
    if timestamp_format is not None:
        numbers = np.full(len(values), np.nan)
    if todo.any():
        fmt = "ISO8601" if timestamp_format is None else timestamp_format
        parsed = pd.to_datetime(text[todo], format=fmt, utc=True, errors="coerce")
        numbers[todo] = _datetime_seconds(parsed)
    return numbers


def _datetime_seconds(parsed: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    """Float unix seconds of tz-aware datetimes; nan for NaT."""
    delta = pd.Series(parsed) - pd.Timestamp(0, tz="UTC")
    return (delta / pd.Timedelta(seconds=1)).to_numpy(dtype=np.float64, na_value=np.nan)


def require_unique(
    frame: pd.DataFrame,
    file: str,
    columns: Sequence[str],
    what: str,
    parsed: pd.DataFrame | None = None,
) -> None:
    """No two rows may share the values of `columns` (compared in `parsed` when given, e.g.
    parsed timestamps, else in `frame`); reports the first repeated row of `frame`."""
    keys = frame if parsed is None else parsed
    bad = keys.duplicated(subset=list(columns), keep="first").to_numpy()
    key = ", ".join(columns)
    _fail(frame, file, key, f"duplicate {what}", bad)


def check_canonical(
    interactions: pd.DataFrame, items: pd.DataFrame, n_users: int, n_items: int, source: str
) -> None:
    """Invariants of the canonical tables (dtypes, dense ids, order, seq, item rows)."""
    file = f"{source}/interactions"
    require_columns(interactions, file, ("user_id", "item_id", "timestamp", "seq"))
    for column in ("user_id", "item_id", "timestamp", "seq"):
        if interactions[column].dtype != np.int64:
            raise DataValidationError(file, column, f"wrong type: {interactions[column].dtype}, expected int64")
    users = interactions["user_id"].to_numpy()
    _fail(interactions, file, "user_id", f"not a dense id in [0, {n_users})", (users < 0) | (users >= n_users))
    item_col = interactions["item_id"].to_numpy()
    _fail(interactions, file, "item_id", f"not a dense id in [0, {n_items})", (item_col < 0) | (item_col >= n_items))
    _check_order(interactions, file)
    _check_items(items, n_items, f"{source}/items")


def _check_order(interactions: pd.DataFrame, file: str) -> None:
    users = interactions["user_id"].to_numpy()
    times = interactions["timestamp"].to_numpy()
    seq = interactions["seq"].to_numpy()
    same = np.zeros(len(users), dtype=bool)
    same[1:] = users[1:] == users[:-1]
    out_of_order = np.zeros(len(users), dtype=bool)
    out_of_order[1:] = (users[1:] < users[:-1]) | (same[1:] & (times[1:] < times[:-1]))
    _fail(interactions, file, "timestamp", "rows not sorted by (user_id, timestamp, seq)", out_of_order)
    starts = np.flatnonzero(~same)
    expected = np.arange(len(users)) - np.repeat(starts, np.diff(np.append(starts, len(users))))
    _fail(interactions, file, "seq", "seq is not the 0-based position in the user's sequence", seq != expected)


def _check_items(items: pd.DataFrame, n_items: int, file: str) -> None:
    require_columns(items, file, ("item_id", "title", "categories", "category", "brand", "price", "created_at"))
    if len(items) != n_items:
        raise DataValidationError(file, "item_id", f"{len(items)} rows, expected one per item ({n_items})")
    ids = items["item_id"].to_numpy()
    _fail(items, file, "item_id", "row i must describe item i", ids != np.arange(n_items))
    for column in ("item_id", "created_at"):
        if items[column].dtype != np.int64:
            raise DataValidationError(file, column, f"wrong type: {items[column].dtype}, expected int64")
    if items["price"].dtype != np.float64:
        raise DataValidationError(file, "price", f"wrong type: {items['price'].dtype}, expected float64")
    for column in ("title", "categories", "category", "brand"):
        _fail(items, file, column, "null text (use '' when unknown)", items[column].isna().to_numpy())
