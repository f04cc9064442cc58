"""The canonical dataset container: dense-id interaction and item tables plus the id maps.

`assemble` turns a parsed log (original ids, source order) into a `Dataset`; every loader and
the synthetic generator go through it, so the id assignment and the ordering rules live here once.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.validate import DataValidationError, check_canonical

INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp", "seq")
OPTIONAL_INTERACTION_COLUMNS = ("value",)  # e.g. an explicit rating, float64
ITEM_COLUMNS = ("item_id", "title", "categories", "category", "brand", "price", "created_at")
ITEM_TEXT_COLUMNS = ("title", "categories", "category", "brand")
FORMAT_NAME = "hybridrec-dataset"
FORMAT_VERSION = 1


@dataclass(eq=False)  # tables do not compare with ==; compare fingerprints
class Dataset:
    """Canonical interactions and items with dense ids (SPEC §1); see `assemble` for the rules."""

    name: str
    interactions: pd.DataFrame
    items: pd.DataFrame
    user_ids: np.ndarray
    item_ids: np.ndarray
    has_time: bool
    has_text: bool
    tie_order: str = "file"  # order of a user's same-timestamp rows: 'file' or 'shuffled:<seed>'

    @property
    def n_users(self) -> int:
        return int(len(self.user_ids))

    @property
    def n_items(self) -> int:
        return int(len(self.item_ids))

    @property
    def n_interactions(self) -> int:
        return int(len(self.interactions))

    def validate(self) -> None:
        """Check the canonical invariants; raises `DataValidationError`."""
        check_canonical(self.interactions, self.items, self.n_users, self.n_items, self.name)

    def fingerprint(self) -> str:
        """sha256 of the canonical tables, maps and flags (not the name); stable across runs."""
        digest = hashlib.sha256(f"{FORMAT_NAME}-v{FORMAT_VERSION}".encode())
        digest.update(f"has_time={self.has_time};has_text={self.has_text}".encode())
        if self.tie_order != "file":  # file order hashes as before, so older folders still load
            digest.update(f"tie_order={self.tie_order}".encode())
        _hash_frame(digest, self.interactions)
        _hash_frame(digest, self.items)
        _hash_strings(digest, self.user_ids)
        _hash_strings(digest, self.item_ids)
        return digest.hexdigest()

    def to_external_items(self, idx: np.ndarray) -> np.ndarray:
        """Dense item ids -> original item ids (str)."""
        return self.item_ids[np.asarray(idx, dtype=np.int64)]

    def to_external_users(self, idx: np.ndarray) -> np.ndarray:
        """Dense user ids -> original user ids (str)."""
        return self.user_ids[np.asarray(idx, dtype=np.int64)]

    def save(self, directory: Path) -> None:
        """Write the Parquet tables and meta.json atomically: everything goes to a temporary
        folder next to `directory`, which is renamed into place at the end (replacing an
        existing dataset folder); on any error nothing new is left at `directory`."""
        target = Path(directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            self._write(staging)
            _move_into_place(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def _write(self, folder: Path) -> None:
        _write_parquet(self.interactions, folder / "interactions.parquet")
        _write_parquet(self.items, folder / "items.parquet")
        _write_parquet(_id_map("user_id", self.user_ids), folder / "user_map.parquet")
        _write_parquet(_id_map("item_id", self.item_ids), folder / "item_map.parquet")
        meta = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "name": self.name,
            "has_time": self.has_time,
            "has_text": self.has_text,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "n_interactions": self.n_interactions,
            "tie_order": self.tie_order,
            "fingerprint": self.fingerprint(),
        }
        (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> "Dataset":
        """Read a folder written by `save`; checks the invariants and the fingerprint."""
        folder = Path(directory)
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT_NAME or meta.get("version") != FORMAT_VERSION:
            message = f"not a {FORMAT_NAME} v{FORMAT_VERSION} folder"
            raise DataValidationError(str(folder / "meta.json"), "format", message)
        dataset = cls(
            name=str(meta["name"]),
            interactions=pd.read_parquet(folder / "interactions.parquet"),
            items=pd.read_parquet(folder / "items.parquet"),
            user_ids=_read_id_map(folder / "user_map.parquet", "user_id"),
            item_ids=_read_id_map(folder / "item_map.parquet", "item_id"),
            has_time=bool(meta["has_time"]),
            has_text=bool(meta["has_text"]),
            tie_order=str(meta.get("tie_order", "file")),
        )
        dataset.validate()
        if dataset.fingerprint() != meta["fingerprint"]:
            raise DataValidationError(
                str(folder / "meta.json"), "fingerprint", "does not match the tables (files changed or corrupt)"
            )
        return dataset


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    frame.to_parquet(path, index=False, engine="pyarrow")


def _move_into_place(staging: Path, target: Path) -> None:
    """Rename `staging` to `target`; an existing target is swapped out and removed only after
    the new folder is in place (restored if the rename fails)."""
    if not target.exists():
        os.replace(staging, target)
        return
    if not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a folder")
    backup = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(target, backup)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(backup, target)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def _id_map(column: str, originals: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        {column: np.arange(len(originals), dtype=np.int64), "original_id": pd.array(originals, dtype="str")}
    )


def _read_id_map(path: Path, column: str) -> np.ndarray:
    frame = pd.read_parquet(path)
    if not np.array_equal(frame[column].to_numpy(), np.arange(len(frame))):
        raise DataValidationError(str(path), column, "id map rows must be 0..n-1 in order")
    return frame["original_id"].to_numpy(dtype=object)


def _hash_frame(digest: "hashlib._Hash", frame: pd.DataFrame) -> None:
    for column in frame.columns:
        values = frame[column]
        digest.update(f"|{column}:{len(values)}|".encode())
        if pd.api.types.is_integer_dtype(values):
            digest.update(values.to_numpy().astype("<i8").tobytes())
        elif pd.api.types.is_float_dtype(values):
            array = values.to_numpy(dtype=np.float64)
            digest.update(np.where(np.isnan(array), np.nan, array).astype("<f8").tobytes())
        else:
            _hash_strings(digest, values.to_numpy(dtype=object))


def _hash_strings(digest: "hashlib._Hash", values: np.ndarray) -> None:
    encoded = [str(v).encode("utf-8") for v in values]
    digest.update(np.fromiter((len(b) for b in encoded), dtype="<i8", count=len(encoded)).tobytes())
    digest.update(b"".join(encoded))




def assemble(
    name: str,
    log: pd.DataFrame,
    items: pd.DataFrame | None,
    *,
    has_time: bool,
    has_text: bool,
    keep_catalog: bool = False,
) -> Dataset:
    """Build a validated `Dataset` from a parsed log.

    log: columns `user` and `item` (original ids, str), `timestamp` (int64; positions when the
    source has no time), optional `value`; rows in source order (ties keep it).
    items: optional metadata keyed by original id in column `item` with any of `title`,
    `categories` ('|'-joined), `category`, `brand`, `price`, `created_at`.
    keep_catalog: also keep metadata items that never occur in the log (appended after them).
    Users are numbered by first appearance in the log, items by first appearance after sorting.
    """
    user_codes, user_ids = pd.factorize(log["user"].to_numpy(dtype=object), sort=False)
    times = log["timestamp"].to_numpy(dtype=np.int64)
    order = np.lexsort((np.arange(len(log)), times, user_codes))
    item_codes, item_ids = pd.factorize(log["item"].to_numpy(dtype=object)[order], sort=False)
    users = user_codes[order].astype(np.int64)
    interactions = pd.DataFrame(
        {"user_id": users, "item_id": item_codes.astype(np.int64), "timestamp": times[order], "seq": _positions(users)}
    )
    if "value" in log.columns:
        interactions["value"] = log["value"].to_numpy(dtype=np.float64)[order]
    item_ids = np.asarray(item_ids, dtype=object)
    if keep_catalog and items is not None:
        extra = items.loc[~items["item"].isin(item_ids), "item"].to_numpy(dtype=object)
        item_ids = np.concatenate([item_ids, extra])
    table = item_table(item_ids, items, interactions)
    dataset = Dataset(name, interactions, table, np.asarray(user_ids, dtype=object), item_ids, has_time, has_text)
    dataset.validate()
    return dataset


def shuffle_ties(dataset: Dataset, seed: int) -> Dataset:
    """The same log with each user's same-timestamp rows in a seeded random order, assembled
    again, so item ids, `seq` and every split follow the new order. Rows whose timestamp is unique
    for their user keep their place; data without ties comes back with the same tables.

    Amazon's files list a user's same-day reviews in ascending ASIN order; a model can learn that
    order (protocol B of SPEC section 9 removes it)."""
    inter = dataset.interactions  # canonical order: user, timestamp, seq
    users = inter["user_id"].to_numpy(np.int64)
    times = inter["timestamp"].to_numpy(np.int64)
    key = np.random.default_rng(seed).random(len(inter))
    order = np.lexsort((key, times, users))
    log = pd.DataFrame({
        "user": dataset.user_ids[users[order]], "item": dataset.item_ids[inter["item_id"].to_numpy(np.int64)[order]],
        "timestamp": times[order],
    })
    if "value" in inter.columns:
        log["value"] = inter["value"].to_numpy(np.float64)[order]
    meta = dataset.items.drop(columns="item_id").assign(item=dataset.item_ids[dataset.items["item_id"].to_numpy(np.int64)])
    out = assemble(dataset.name, log, meta, has_time=dataset.has_time, has_text=dataset.has_text, keep_catalog=True)
    out.tie_order = f"shuffled:{seed}"
    return out


def _positions(sorted_users: np.ndarray) -> np.ndarray:
    """0-based position of each row within its run of equal user ids."""
    n = len(sorted_users)
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]]) if n else np.zeros(0, np.int64)
    lengths = np.diff(np.append(starts, n))
    return (np.arange(n) - np.repeat(starts, lengths)).astype(np.int64)


def item_table(item_ids: np.ndarray, meta: pd.DataFrame | None, interactions: pd.DataFrame) -> pd.DataFrame:
    """The canonical item table: row i describes dense item i."""
    n_items = len(item_ids)
    keyed = pd.DataFrame(index=pd.Index(item_ids, dtype=object))
    if meta is not None:
        keyed = meta.set_index(pd.Index(meta["item"].to_numpy(dtype=object))).reindex(keyed.index)
    text = {c: _text_column(keyed, c, n_items) for c in ("title", "categories", "brand")}
    given = _text_column(keyed, "category", n_items)
    derived = np.array([category_of(path) for path in text["categories"]], dtype=object)
    category = np.where(given != "", given, derived)
    price = keyed["price"].to_numpy(dtype=np.float64, na_value=np.nan) if "price" in keyed else np.full(n_items, np.nan)
    return pd.DataFrame(
        {
            "item_id": np.arange(n_items, dtype=np.int64),
            "title": pd.array(text["title"], dtype="str"),
            "categories": pd.array(text["categories"], dtype="str"),
            "category": pd.array(category, dtype="str"),
            "brand": pd.array(text["brand"], dtype="str"),
            "price": price,
            "created_at": _created_at(keyed, interactions, n_items),
        }
    )


def _text_column(keyed: pd.DataFrame, column: str, n_items: int) -> np.ndarray:
    if column not in keyed.columns:
        return np.full(n_items, "", dtype=object)
    values = keyed[column].astype(object)
    return values.where(values.notna(), "").map(str).to_numpy(dtype=object)


def category_of(path: str) -> str:
    """The level below the root of a '|'-joined path, or the root for a one-level path."""
    if not path:
        return ""
    parts = path.split("|")
    return parts[1] if len(parts) > 1 else parts[0]


def _created_at(keyed: pd.DataFrame, interactions: pd.DataFrame, n_items: int) -> np.ndarray:
    """Given creation time, else the first interaction time, else the earliest log time."""
    first = np.full(n_items, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, interactions["item_id"].to_numpy(), interactions["timestamp"].to_numpy())
    fallback = int(interactions["timestamp"].min()) if len(interactions) else 0
    first[first == np.iinfo(np.int64).max] = fallback
    if "created_at" not in keyed.columns:
        return first
    given = keyed["created_at"].to_numpy(dtype=np.float64, na_value=np.nan)
    return np.where(np.isnan(given), first, np.nan_to_num(given)).astype(np.int64)
