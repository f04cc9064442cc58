"""Bad inputs: each kind raises DataValidationError naming the file, the column and a row."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.data import DataValidationError, load_amazon, load_generic
from pipeline.data.validate import parse_timestamps

ITEM_HEADER = "item_id:token\ttitle:token\tsales_type:token\tsales_rank:float\tcategories:token_seq\tprice:float\tbrand:token\n"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_error_message_format() -> None:
    error = DataValidationError("log.csv", "price", "wrong type", {"price": "abc"}, 7)
    assert str(error) == "log.csv: column 'price': wrong type (example row 7: {'price': 'abc'})"
    assert isinstance(error, ValueError)
    assert (error.file, error.column, error.row_number) == ("log.csv", "price", 7)
    assert str(DataValidationError("a.tsv", None, "empty file")) == "a.tsv: empty file"


def test_missing_column_names_file_column_and_row(tmp_path: Path) -> None:
    log = _write(tmp_path / "log.csv", "uid,iid,when\nu1,i1,100\nu1,i2,200\n")
    with pytest.raises(DataValidationError) as caught:
        load_generic(log, columns={"user_id": "uid", "item_id": "iid", "timestamp": "time"})
    message = str(caught.value)
    assert str(log) in message
    assert "column 'time': missing required column" in message
    assert "['uid', 'iid', 'when']" in message
    assert "example row 1: {'uid': 'u1', 'iid': 'i1', 'when': '100'}" in message


def test_wrong_type_position(tmp_path: Path) -> None:
    folder = tmp_path / "toys"
    seqs = _write(folder / "sequences.tsv", "user_id\titem_id\tposition\nA\tx\t0\nA\ty\t1.5\nA\tz\t2\n")
    with pytest.raises(DataValidationError) as caught:
        load_amazon(folder)
    assert str(caught.value) == (
        f"{seqs}: column 'position': wrong type: expected an integer "
        "(example row 2: {'user_id': 'A', 'item_id': 'y', 'position': '1.5'})"
    )


def test_wrong_type_price(tmp_path: Path) -> None:
    folder = tmp_path / "beauty"
    _write(folder / "interactions.tsv", "user_id\titem_id\ttimestamp\nA\tp1\t10\nA\tp2\t20\n")
    items = _write(folder / "original" / "Beauty.item", ITEM_HEADER + "p1\tT1\tB\t1.0\t'Beauty'\t9.5\tX\np2\tT2\tB\t2.0\t'Beauty'\tcheap\tY\n")
    with pytest.raises(DataValidationError) as caught:
        load_amazon(folder)
    message = str(caught.value)
    assert message.startswith(f"{items}: column 'price': wrong type: expected a number")
    assert "example row 2:" in message and "'price': 'cheap'" in message


def test_empty_file(tmp_path: Path) -> None:
    log = _write(tmp_path / "log.tsv", "user_id\titem_id\ttimestamp\n")
    with pytest.raises(DataValidationError) as caught:
        load_generic(log)
    assert str(caught.value) == f"{log}: empty file: no data rows (columns: user_id, item_id, timestamp)"


def test_duplicate_interactions_compare_parsed_timestamps(tmp_path: Path) -> None:
    log = _write(tmp_path / "log.csv", "user_id,item_id,timestamp\na,x,0\na,y,60\na,y,1970-01-01T00:01:00Z\n")
    with pytest.raises(DataValidationError) as caught:
        load_generic(log)
    message = str(caught.value)
    assert message.startswith(f"{log}: column 'user, item, timestamp': duplicate interaction")
    assert "example row 3: {'user_id': 'a', 'item_id': 'y', 'timestamp': '1970-01-01T00:01:00Z'}" in message


def test_duplicate_item_ids_in_metadata(tmp_path: Path) -> None:
    log = _write(tmp_path / "log.csv", "user_id,item_id,timestamp\na,x,1\na,y,2\n")
    items = _write(tmp_path / "items.csv", "item_id,title\nx,first\ny,second\nx,again\n")
    with pytest.raises(DataValidationError) as caught:
        load_generic(log, items_path=items)
    assert str(caught.value) == (
        f"{items}: column 'item_id': duplicate item id (example row 3: {{'item_id': 'x', 'title': 'again'}})"
    )


def test_bad_timestamp_reports_first_bad_value(tmp_path: Path) -> None:
    log = _write(tmp_path / "log.csv", "user_id,item_id,timestamp\na,x,2020-01-02\na,y,2020-13-45\nb,x,soon\n")
    with pytest.raises(DataValidationError) as caught:
        load_generic(log)
    message = str(caught.value)
    assert message.startswith(f"{log}: column 'timestamp': bad timestamp: does not parse")
    assert "(2 rows)" in message
    assert "example row 2: {'user_id': 'a', 'item_id': 'y', 'timestamp': '2020-13-45'}" in message


def test_millisecond_timestamps_are_flagged_with_a_hint(tmp_path: Path) -> None:
    log = _write(tmp_path / "log.csv", "user_id,item_id,timestamp\na,x,1577836800000\n")
    with pytest.raises(DataValidationError, match="timestamp_format='unix_ms'"):
        load_generic(log)
    assert load_generic(log, timestamp_format="unix_ms").interactions["timestamp"].tolist() == [1577836800]


def test_null_user_id(tmp_path: Path) -> None:
    log = _write(tmp_path / "log.tsv", "user_id\titem_id\ttimestamp\na\tx\t1\n\ty\t2\n")
    with pytest.raises(DataValidationError) as caught:
        load_generic(log)
    message = str(caught.value)
    assert message.startswith(f"{log}: column 'user_id': null or empty id")
    assert "example row 2: {'user_id': nan, 'item_id': 'y', 'timestamp': '2'}" in message


def test_null_item_id_in_parquet(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    pd.DataFrame({"u": [1, 2], "i": [10.0, np.nan], "t": [5, 6]}).to_parquet(path)
    with pytest.raises(DataValidationError, match=r"column 'i': null or empty id \(example row 2: "):
        load_generic(path, columns={"user_id": "u", "item_id": "i", "timestamp": "t"})


def test_timestamp_forms_parse_to_unix_seconds() -> None:
    frame = pd.DataFrame({"t": ["1318896000", "1318896000.7", "2011-10-18", "2011-10-18T01:00:00+01:00"]})
    assert parse_timestamps(frame, "f", "t").tolist() == [1318896000] * 4
    numeric = pd.DataFrame({"t": [1.5, 2.0]})
    assert parse_timestamps(numeric, "f", "t").tolist() == [1, 2]
    custom = pd.DataFrame({"t": ["18/10/2011"]})
    assert parse_timestamps(custom, "f", "t", "%d/%m/%Y").tolist() == [1318896000]
