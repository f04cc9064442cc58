"""Loaders: the real datasets (skipped when ../shared/data is absent) and small hand-made files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.data import LOADERS, default_data_root, load_amazon, load_dataset, load_movielens
from pipeline.data.amazon import category_path

ITEM_HEADER = "item_id:token\ttitle:token\tsales_type:token\tsales_rank:float\tcategories:token_seq\tprice:float\tbrand:token\n"


def _shared(folder: str) -> Path:
    path = default_data_root() / folder
    if not path.exists():
        pytest.skip(f"dataset {folder} not found under {default_data_root()} (set HYBRIDREC_DATA)")
    return path


@pytest.mark.data
def test_amazon_beauty_counts_and_metadata() -> None:
    data = load_amazon(_shared("amazon-beauty-2014-5core"))  # (its load time is a benchmark's business)
    assert (data.n_users, data.n_items, data.n_interactions) == (22_363, 12_101, 198_502)
    assert data.has_time and data.has_text and data.name == "amazon-beauty-2014-5core"
    frame = data.interactions
    assert (frame["timestamp"].min(), frame["timestamp"].max()) == (1_023_840_000, 1_406_073_600)
    assert data.user_ids[0] == "A1YJEY40YUW4SE"
    assert data.to_external_items(frame["item_id"].to_numpy()[:4]).tolist() == ["B004756YJA", "B004ZT0SSG", "B0020YLEYK", "7806397051"]
    items = data.items.set_index(data.item_ids)
    assert items.loc["7806397051", "categories"] == "Beauty|Makeup|Face|Concealers & Neutralizers"
    assert items.loc["7806397051", "category"] == "Makeup"
    assert items.loc["9788072216", "categories"] == "Beauty|Fragrance|Women's|Eau de Parfum"
    assert items.loc["B00004U9V2", "title"].startswith("Crabtree & Evelyn")  # HTML entity unescaped
    assert ((items["title"] == "").sum(), (items["brand"] == "").sum(), items["price"].isna().sum()) == (7, 2098, 585)
    assert items["title"].str.contains("\n").sum() == 1  # the quoted multi-line title survived


@pytest.mark.data
def test_amazon_toys_has_order_but_no_time() -> None:
    data = load_amazon(_shared("amazon-toys-2014-5core"))
    assert (data.n_users, data.n_items, data.n_interactions) == (19_412, 11_924, 167_597)
    assert not data.has_time and not data.has_text
    assert (data.interactions["timestamp"] == data.interactions["seq"]).all()
    assert (data.items["title"] == "").all() and data.items["price"].isna().all()


@pytest.mark.data
def test_movielens_100k_counts() -> None:
    data = load_movielens(_shared("movielens-100k"))
    assert (data.n_users, data.n_items, data.n_interactions) == (943, 1682, 100_000)
    assert data.has_time and data.has_text
    assert sorted(data.interactions["value"].unique().tolist()) == [1.0, 2.0, 3.0, 4.0, 5.0]
    items = data.items.set_index(data.item_ids)
    assert items.loc["1", "title"] == "Toy Story (1995)"
    assert items.loc["1", "categories"] == "Movies|Animation|Children's|Comedy"
    assert items.loc["1", "category"] == "Animation"
    assert items.loc["267", ["title", "categories", "category"]].tolist() == ["unknown", "", ""]


def test_dispatch_table_and_errors(tmp_path: Path) -> None:
    assert sorted(LOADERS) == ["amazon", "generic", "movielens", "synthetic"]
    small = load_dataset("synthetic", None, n_users=20, n_items=30, n_categories=3, n_brands=4, mean_length=6, seed=4)
    assert small.n_users == 20 and small.name == "synthetic"
    with pytest.raises(ValueError, match=r"unknown data source 'kaggle'; expected one of \['amazon'"):
        load_dataset("kaggle", tmp_path)
    with pytest.raises(ValueError, match="load_movielens needs a path"):
        load_dataset("movielens", None)
    with pytest.raises(ValueError, match="synthetic source takes no path"):
        load_dataset("synthetic", tmp_path)
    with pytest.raises(FileNotFoundError, match="no u.data, ratings.dat"):
        load_dataset("movielens", tmp_path)


def test_default_data_root_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HYBRIDREC_DATA", str(tmp_path))
    assert default_data_root() == tmp_path
    monkeypatch.delenv("HYBRIDREC_DATA")
    assert default_data_root().parts[-2:] == ("shared", "data")


def test_recbole_items_with_quoted_newlines_and_tabs(tmp_path: Path) -> None:
    folder = tmp_path / "amazon-mini"
    (folder / "original").mkdir(parents=True)
    (folder / "interactions.tsv").write_text("user_id\titem_id\ttimestamp\nU1\tA\t100\nU1\tB\t100\nU2\tB\t50\n", encoding="utf-8")
    (folder / "original" / "Mini.item").write_text(
        ITEM_HEADER
        + "A\t\"Two\nlines\"\tBeauty\t1.0\t\"'Beauty', 'Fragrance', \"\"Women's\"\"\"\t\t\n"
        + "B\t\"tab\there\"\tBeauty\t\t'Beauty', 'Tools &amp; More'\t3.5\tAcme &amp; Co\n",
        encoding="utf-8",
    )
    data = load_amazon(folder, name="mini")
    assert data.user_ids.tolist() == ["U1", "U2"] and data.item_ids.tolist() == ["A", "B"]
    assert data.interactions["item_id"].tolist() == [0, 1, 1]  # tie at t=100 keeps file order
    items = data.items
    assert items["title"].tolist() == ["Two\nlines", "tab\there"]
    assert items["categories"].tolist() == ["Beauty|Fragrance|Women's", "Beauty|Tools & More"]
    assert items["category"].tolist() == ["Fragrance", "Tools & More"]
    assert items["brand"].tolist() == ["", "Acme & Co"]
    assert np.isnan(items["price"].iloc[0]) and items["price"].iloc[1] == 3.5
    assert items["created_at"].tolist() == [100, 50]


def test_category_path_forms() -> None:
    assert category_path("'Beauty', 'Makeup', 'Face'") == "Beauty|Makeup|Face"
    assert category_path("'Beauty', \"Men's\", 'Creams, Gels & Lotions'") == "Beauty|Men's|Creams, Gels & Lotions"
    assert category_path("") == ""


def test_movielens_1m_without_ratings_file(tmp_path: Path) -> None:
    pd.DataFrame({"userID": ["1", "1", "2"], "movieID": ["20", "10", "20"]}).to_parquet(
        tmp_path / "ratings_userid_movieid_only.parquet"
    )
    (tmp_path / "movies.dat").write_bytes("10::Caf\xe9 (1999)::Drama|Comedy\n20::Heat (1995)::Action\n".encode("latin-1"))
    data = load_movielens(tmp_path)
    assert not data.has_time and data.has_text
    assert data.interactions["timestamp"].tolist() == [0, 1, 0]
    assert data.item_ids.tolist() == ["20", "10"]
    assert data.items["title"].tolist() == ["Heat (1995)", "Café (1999)"]
    assert data.items["category"].tolist() == ["Action", "Drama"]


def test_movielens_1m_ratings_dat(tmp_path: Path) -> None:
    (tmp_path / "ratings.dat").write_text("1::10::5::978300760\n1::20::3::978300000\n", encoding="latin-1")
    data = load_movielens(tmp_path)
    assert data.has_time and not data.has_text
    assert data.interactions["timestamp"].tolist() == [978300000, 978300760]
    assert data.interactions["value"].tolist() == [3.0, 5.0]
