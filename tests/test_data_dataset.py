"""Canonical assembly rules, save/load round trip, fingerprint, atomic save."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import pipeline.data.dataset as dataset_module
from pipeline.data import DataValidationError, Dataset, load_generic, synthesize


@pytest.fixture(scope="module")
def data_small() -> Dataset:
    return synthesize(n_users=60, n_items=80, n_categories=4, n_brands=6, mean_length=8, seed=3)


def _tiny_log(tmp_path: Path) -> Path:
    path = tmp_path / "log.csv"
    # user b appears first; a has a tie at t=5 (file order x then z), rows out of time order
    path.write_text("user,item,ts,rating\nb,y,7,4\na,z,9,1\na,x,5,3\na,z,5,2\nb,x,1,5\n", encoding="utf-8")
    return path


def test_assemble_dense_ids_order_and_ties(tmp_path: Path) -> None:
    items = tmp_path / "items.csv"
    items.write_text("id,name,path,cost\nx,Ex,Root|Sub|Leaf,1.5\nq,unused,Root,2\n", encoding="utf-8")
    data = load_generic(
        _tiny_log(tmp_path),
        columns={"user_id": "user", "item_id": "item", "timestamp": "ts", "value": "rating"},
        items_path=items,
        item_columns={"item_id": "id", "title": "name", "categories": "path", "price": "cost"},
    )
    assert data.user_ids.tolist() == ["b", "a"]  # first appearance in the file
    frame = data.interactions
    assert frame["user_id"].tolist() == [0, 0, 1, 1, 1]
    assert frame["timestamp"].tolist() == [1, 7, 5, 5, 9]
    assert frame["seq"].tolist() == [0, 1, 0, 1, 2]
    assert data.to_external_items(frame["item_id"].to_numpy()).tolist() == ["x", "y", "x", "z", "z"]
    assert data.item_ids.tolist() == ["x", "y", "z"]  # first appearance after sorting; 'q' unused
    assert frame["value"].tolist() == [5.0, 4.0, 3.0, 2.0, 1.0]
    table = data.items
    assert table.loc[0, ["title", "categories", "category"]].tolist() == ["Ex", "Root|Sub|Leaf", "Sub"]
    assert table["title"].tolist() == ["Ex", "", ""]
    assert table["price"].iloc[0] == 1.5 and np.isnan(table["price"].iloc[1])
    assert table["created_at"].tolist() == [1, 7, 5]  # first interaction time
    assert data.has_time and data.has_text and data.name == "log"


def test_log_without_timestamp_uses_file_order(tmp_path: Path) -> None:
    path = tmp_path / "clicks.tsv"
    path.write_text("user_id\titem_id\nu\tb\nv\ta\nu\ta\n", encoding="utf-8")
    data = load_generic(path)
    assert not data.has_time and not data.has_text
    assert data.interactions["timestamp"].tolist() == [0, 1, 0]
    assert data.items["category"].tolist() == ["", ""]


def test_save_load_round_trip(tmp_path: Path, data_small: Dataset) -> None:
    target = tmp_path / "prepared" / "synthetic"
    data_small.save(target)
    assert sorted(p.name for p in target.iterdir()) == [
        "interactions.parquet", "item_map.parquet", "items.parquet", "meta.json", "user_map.parquet"
    ]
    meta = json.loads((target / "meta.json").read_text())
    assert meta["n_users"] == 60 and meta["n_items"] == 80 and meta["fingerprint"] == data_small.fingerprint()
    loaded = Dataset.load(target)
    pd.testing.assert_frame_equal(loaded.interactions, data_small.interactions)
    pd.testing.assert_frame_equal(loaded.items, data_small.items)
    assert np.array_equal(loaded.user_ids, data_small.user_ids) and np.array_equal(loaded.item_ids, data_small.item_ids)
    assert (loaded.name, loaded.has_time, loaded.has_text) == ("synthetic", True, True)
    assert loaded.fingerprint() == data_small.fingerprint()
    assert sorted(p.name for p in target.parent.iterdir()) == ["synthetic"]  # no temp folders left


def test_round_trip_with_value_column(tmp_path: Path) -> None:
    data = load_generic(_tiny_log(tmp_path), columns={"user_id": "user", "item_id": "item", "timestamp": "ts", "value": "rating"})
    data.save(tmp_path / "out")
    loaded = Dataset.load(tmp_path / "out")
    pd.testing.assert_frame_equal(loaded.interactions, data.interactions)
    assert loaded.fingerprint() == data.fingerprint()


def test_fingerprint_is_stable_and_content_sensitive(data_small: Dataset) -> None:
    again = synthesize(n_users=60, n_items=80, n_categories=4, n_brands=6, mean_length=8, seed=3)
    assert again.fingerprint() == data_small.fingerprint()
    assert len(data_small.fingerprint()) == 64
    changed = synthesize(n_users=60, n_items=80, n_categories=4, n_brands=6, mean_length=8, seed=3)
    changed.items.loc[0, "title"] = changed.items.loc[0, "title"] + "!"
    assert changed.fingerprint() != data_small.fingerprint()


def test_failed_save_leaves_nothing_at_target(tmp_path: Path, data_small: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = dataset_module._write_parquet
    calls: list[Path] = []

    def failing_write(frame: pd.DataFrame, path: Path) -> None:
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        real_write(frame, path)

    monkeypatch.setattr(dataset_module, "_write_parquet", failing_write)
    target = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        data_small.save(target)
    assert len(calls) == 3
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_previous_dataset(tmp_path: Path, data_small: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out"
    data_small.save(target)
    other = synthesize(n_users=30, n_items=40, n_categories=3, n_brands=4, mean_length=6, seed=9)

    def broken_write(frame: pd.DataFrame, path: Path) -> None:
        raise OSError("boom")

    monkeypatch.setattr(dataset_module, "_write_parquet", broken_write)
    with pytest.raises(OSError, match="boom"):
        other.save(target)
    assert Dataset.load(target).fingerprint() == data_small.fingerprint()
    monkeypatch.undo()
    other.save(target)  # a successful overwrite replaces it
    assert Dataset.load(target).fingerprint() == other.fingerprint()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_load_rejects_tampered_tables(tmp_path: Path, data_small: Dataset) -> None:
    target = tmp_path / "out"
    data_small.save(target)
    items = pd.read_parquet(target / "items.parquet")
    items.loc[0, "brand"] = "other"
    items.to_parquet(target / "items.parquet", index=False)
    with pytest.raises(DataValidationError, match=r"meta.json: column 'fingerprint': does not match"):
        Dataset.load(target)


def test_validate_rejects_broken_invariants(data_small: Dataset) -> None:
    broken = Dataset(
        data_small.name,
        data_small.interactions.iloc[::-1].reset_index(drop=True),
        data_small.items,
        data_small.user_ids,
        data_small.item_ids,
        True,
        True,
    )
    with pytest.raises(DataValidationError, match=r"synthetic/interactions: column 'timestamp': rows not sorted"):
        broken.validate()
