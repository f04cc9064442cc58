"""Batch inference (`hybridrec recommend`): the run's cascade for many users, to Parquet; in
process and on Ray Data with the same rows."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.batch import read_meta, read_users, recommend, write
from pipeline.cli import main
from pipeline.config import ConfigError, parse_config
from pipeline.core.types import PAD, Request
from pipeline.workflow import load_run, train

NOW = 1_900_000_000
CONFIG = {
    "data": {"source": "synthetic", "synthetic": {"n_users": 120, "n_items": 80, "seed": 2}},
    "channels": [{"name": "popularity", "kind": "popularity", "quota": 30},
                 {"name": "item2item", "kind": "item2item", "quota": 30}],
    "pool": {"budget": 60},
    "ranker": {"kind": "lgbm", "params": {"n_estimators": 10, "num_leaves": 7, "min_child_samples": 5}},
    "eval": {"n_boot": 10},
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train(parse_config(CONFIG), run_dir=tmp_path_factory.mktemp("batch") / "run")


def test_every_user_gets_the_cascade_list_as_one_request_would(run_dir):
    frame, meta = recommend(run_dir, "all", 7, now=NOW, batch_size=50, progress=False)
    run = load_run(run_dir)
    assert meta["users"] == run.dataset.n_users == frame["user_id"].nunique() and meta["unknown_users"] == 0
    assert list(frame.columns) == ["user_id", "rank", "item_id", "score", "reasons"]
    assert (frame.groupby("user_id", sort=False)["rank"].apply(list) == [list(range(1, 8))] * run.dataset.n_users).all()
    hist = run.split.history(run.stage)
    for user in (0, 17, 119):  # the same list as the cascade answers a single request
        rows = hist[hist["user_id"] == user].sort_values(["timestamp", "seq"])
        rec = run.cascade.recommend(Request(user=user, history=rows["item_id"].to_numpy(np.int64),
                                            history_times=rows["timestamp"].to_numpy(np.int64), k=7, now=NOW))
        got = frame[frame["user_id"] == str(run.dataset.user_ids[user])]
        assert got["item_id"].tolist() == run.dataset.item_ids[rec.items].astype(str).tolist()
        np.testing.assert_allclose(got["score"].to_numpy(), rec.scores, rtol=1e-6)
        seen = set(run.dataset.item_ids[rows["item_id"].to_numpy()].astype(str))
        assert not seen & set(got["item_id"])
    # batching does not change a list
    again, _ = recommend(run_dir, "all", 7, now=NOW, batch_size=13, progress=False)
    pd.testing.assert_frame_equal(frame, again)


def test_a_users_file_unknown_ids_and_the_written_file(run_dir, tmp_path):
    run = load_run(run_dir)
    ids = [str(run.dataset.user_ids[5]), "not-a-user", str(run.dataset.user_ids[2])]
    (tmp_path / "users.txt").write_text("\n".join(ids) + "\n")
    frame, meta = recommend(run_dir, str(tmp_path / "users.txt"), 4, now=NOW, progress=False)
    assert frame["user_id"].drop_duplicates().tolist() == ids and meta["unknown_users"] == 1
    anonymous = run.cascade.recommend(Request(user=None, k=4, now=NOW))
    assert frame[frame["user_id"] == "not-a-user"]["item_id"].tolist() == run.dataset.item_ids[anonymous.items].astype(str).tolist()
    out = write(frame, meta, tmp_path / "out" / "recs.parquet")
    back = pd.read_parquet(out)
    pd.testing.assert_frame_equal(back.drop(columns="reasons"), frame.drop(columns="reasons"))
    assert [list(r) for r in back["reasons"]] == frame["reasons"].tolist()
    assert read_meta(out)["now"] == NOW and read_meta(out)["k"] == 4


@pytest.mark.parametrize("content, name, message", [
    ("", "empty.txt", "no user ids"),
    ("a\na\n", "dup.txt", "duplicate"),
    ("who\nx\n", "bad.csv", "needs a 'user_id' column"),
])
def test_bad_user_files_are_refused_with_the_reason(tmp_path, content, name, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(ConfigError, match=message):
        read_users(str(tmp_path / name), np.array(["a", "b"], object))
    with pytest.raises(ConfigError, match="neither 'all' nor a file"):
        read_users(str(tmp_path / "missing.txt"), np.array(["a"], object))
    assert read_users("all", np.array(["a", "b"], object)).dense.tolist() == [0, 1]
    assert read_users(str(_csv(tmp_path)), np.array(["a", "b"], object)).dense.tolist() == [1, PAD]


def _csv(tmp_path):
    path = tmp_path / "ok.csv"
    pd.DataFrame({"user_id": ["b", "zz"]}).to_csv(path, index=False)
    return path


def test_the_cli_writes_refuses_to_overwrite_and_checks_k(run_dir, tmp_path, capsys):
    out = tmp_path / "recs.parquet"
    assert main(["recommend", "--run", str(run_dir), "--k", "3", "--out", str(out), "--now", str(NOW)]) == 0
    assert "users/s" in capsys.readouterr().out and len(pd.read_parquet(out)) == 3 * 120
    assert main(["recommend", "--run", str(run_dir), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["recommend", "--run", str(run_dir), "--k", "0", "--out", str(tmp_path / "x.parquet")]) == 2
    assert "--k must be at least 1" in capsys.readouterr().err


def test_ray_data_gives_the_same_rows(run_dir):
    pytest.importorskip("ray.data")
    import ray

    local, _ = recommend(run_dir, "all", 5, now=NOW, batch_size=40, progress=False)
    try:
        distributed, meta = recommend(run_dir, "all", 5, now=NOW, batch_size=40, use_ray=True, ray_actors=2)
    finally:
        ray.shutdown()
    assert meta["engine"] == "ray"
    pd.testing.assert_frame_equal(local.drop(columns="reasons"), distributed.drop(columns="reasons"))
    assert local["reasons"].tolist() == distributed["reasons"].tolist()
