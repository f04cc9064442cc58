"""MovieLens 100K (`u.data`, `u.item`) and 1M (`ratings.dat` or, without time, the
`ratings_userid_movieid_only.parquet` stand-in; `movies.dat`) from the original files.

Genres become a category path under the root 'Movies' ('Movies|Animation|Comedy'), so the
item's `category` is its first genre; the rating is kept as the interaction `value`."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.dataset import Dataset, assemble
from pipeline.data.generic import parse_items, parse_log, read_table
from pipeline.data.validate import parse_integers, require_columns, require_rows

GENRE_ROOT = "Movies"
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)
ML100K_ITEM_FIELDS = ["item_id", "title", "release_date", "video_release_date", "url", *ML100K_GENRES]
RATING_FIELDS = ["user_id", "item_id", "value", "timestamp"]
ML1M_PAIRS = "ratings_userid_movieid_only.parquet"


def load_movielens(directory: str | Path, name: str | None = None) -> Dataset:
    """Load MovieLens 100K or 1M from a folder of original files (detected by file names)."""
    folder = Path(directory)
    if (folder / "u.data").exists():
        log, has_time = _read_ratings(folder / "u.data", "\t")
        items = _read_100k_items(folder / "u.item") if (folder / "u.item").exists() else None
    elif (folder / "ratings.dat").exists() or (folder / ML1M_PAIRS).exists():
        log, has_time = _read_1m_log(folder)
        items = _read_1m_movies(folder / "movies.dat") if (folder / "movies.dat").exists() else None
    else:
        raise FileNotFoundError(f"{folder}: no u.data, ratings.dat or {ML1M_PAIRS}")
    return assemble(name or folder.name, log, items, has_time=has_time, has_text=items is not None)


def _read_ratings(path: Path, sep: str) -> tuple[pd.DataFrame, bool]:
    frame = read_table(path, sep=sep, names=RATING_FIELDS, encoding="latin-1")
    return parse_log(frame, str(path))


def _read_1m_log(folder: Path) -> tuple[pd.DataFrame, bool]:
    if (folder / "ratings.dat").exists():
        return _read_ratings(folder / "ratings.dat", "::")
    path = folder / ML1M_PAIRS
    columns = {"user_id": "userID", "item_id": "movieID"}
    return parse_log(read_table(path), str(path), columns)


def _read_100k_items(path: Path) -> pd.DataFrame:
    frame = read_table(path, sep="|", names=ML100K_ITEM_FIELDS, encoding="latin-1", quoting=csv.QUOTE_NONE)
    require_rows(frame, str(path))
    require_columns(frame, str(path), ML100K_ITEM_FIELDS)
    flags = np.column_stack([parse_integers(frame, str(path), genre) for genre in ML100K_GENRES])
    genres = [[g for g, on in zip(ML100K_GENRES, row) if on and g != "unknown"] for row in flags]
    frame = frame.assign(categories=[genre_path(g) for g in genres])
    return parse_items(frame, str(path), {"item_id": "item_id", "title": "title", "categories": "categories"})


def _read_1m_movies(path: Path) -> pd.DataFrame:
    frame = read_table(path, sep="::", names=["item_id", "title", "genres"], encoding="latin-1", quoting=csv.QUOTE_NONE)
    require_rows(frame, str(path))
    genres = frame["genres"].astype(object).where(frame["genres"].notna(), "")
    frame = frame.assign(categories=[genre_path([g for g in text.split("|") if g]) for text in genres])
    return parse_items(frame, str(path), {"item_id": "item_id", "title": "title", "categories": "categories"})


def genre_path(genres: list[str]) -> str:
    """['Animation', 'Comedy'] -> 'Movies|Animation|Comedy'; no genres -> ''."""
    return "|".join([GENRE_ROOT, *genres]) if genres else ""
