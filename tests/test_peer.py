"""The peer harness (bench/peer.py): what the peer is given, how its lists are scored, and the
ratio entry. One test trains the real RecTools SASRec when the peers environment exists."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bench import peer as P
from bench.protocol_b import peer_entry
from pipeline.core.types import PAD
from pipeline.data import assemble, leave_one_out, shuffle_ties
from pipeline.evaluation.harness import build_eval_set


def _split(seed: int | None = None):
    log = pd.DataFrame({
        "user": ["u0"] * 5 + ["u1"] * 4 + ["u2"] * 4,
        "item": ["a", "b", "c", "d", "e", "b", "c", "d", "f", "a", "c", "e", "f"],
        "timestamp": [1, 2, 2, 3, 4, 5, 6, 7, 8, 1, 1, 2, 3],
    })
    ds = assemble("peer", log, pd.DataFrame({"item": list("abcdef")}), has_time=True, has_text=False)
    ds = ds if seed is None else shuffle_ties(ds, seed)
    return leave_one_out(ds.interactions)


def test_export_gives_the_stage_history_in_our_order_and_no_target(tmp_path):
    split = _split(seed=4)
    evalset = P.export(split, "test", 50, "last", tmp_path)
    fit = pd.read_parquet(tmp_path / "fit.parquet")
    hist = split.history("test")
    assert list(fit.columns) == ["user_id", "item_id", "timestamp"]
    assert fit.to_numpy().tolist() == hist[["user_id", "item_id", "timestamp"]].to_numpy().tolist()
    targets = set(zip(split.test["user_id"], split.test["item_id"], split.test["timestamp"]))
    assert not targets & set(map(tuple, fit.to_numpy().tolist()))
    assert pd.read_parquet(tmp_path / "users.parquet")["user_id"].tolist() == evalset.batch.users.tolist()


def test_lists_follow_rank_skip_seen_and_unknown_users_and_pad():
    split = _split()
    evalset = build_eval_set(split, "test", 50)
    users = evalset.batch.users.tolist()
    hist = split.history("test")
    seen0 = set(hist.loc[hist["user_id"] == users[0], "item_id"])
    unseen0 = [i for i in range(6) if i not in seen0]
    recs = pd.DataFrame({  # ranks out of order, one seen item, and a user we did not ask for
        "user_id": [users[0], users[0], users[0], 99],
        "item_id": [unseen0[1], next(iter(seen0)), unseen0[0], 1],
        "rank": [2, 1, 3, 1],
    })
    topk = P.lists_from_recs(recs, evalset, hist, k=4)
    assert topk.shape == (len(users), 4)
    assert topk[0].tolist() == [unseen0[1], unseen0[0], PAD, PAD]
    assert (topk[1:] == PAD).all()


def test_score_counts_a_hit_at_its_rank():
    split = _split()
    evalset = build_eval_set(split, "test", 50)
    topk = np.full((len(evalset), 10), PAD, np.int64)
    topk[0, 1] = evalset.targets[0]  # second place for the first user, nothing for the others
    got = P.score(topk, evalset)
    assert got["R@5"] == pytest.approx(1 / len(evalset))
    assert got["N@10"] == pytest.approx((1 / np.log2(3)) / len(evalset))


def test_peer_entry_ratios_and_user_check():
    rows = [{"R@5": .05, "N@5": .03, "R@10": .08, "N@10": .04, "R@20": .1, "users": 10, "train_seconds": 5.0},
            {"R@5": .05, "N@5": .03, "R@10": .10, "N@10": .05, "R@20": .1, "users": 10, "train_seconds": 7.0}]
    reports = [{"users": 10, "arms": {"cascade_mtgr": {"R@10": .12, "N@10": .06}}},
               {"users": 10, "arms": {"cascade_mtgr": {"R@10": .12, "N@10": .06}}}]
    entry = peer_entry(rows, reports, [1, 2], "cmd", 7)
    assert entry["R@10"] == pytest.approx(.09) and entry["R@10_std"] == pytest.approx(0.0141, abs=1e-4)
    assert entry["ours_over_peer"]["cascade_mtgr"]["per_seed"] == [{"R@10": 1.5, "N@10": 1.5},
                                                                   {"R@10": 1.2, "N@10": 1.2}]
    assert entry["ours_over_peer"]["cascade_mtgr"]["R@10"] == pytest.approx(1.35)
    assert entry["params"]["epochs"] == 7 and entry["seconds"] == 6.0
    reports[1]["users"] = 9
    with pytest.raises(RuntimeError, match="9"):
        peer_entry(rows, reports, [1, 2], "cmd", 7)


def test_missing_peer_environment_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HYBRIDREC_PEER_PYTHON", str(tmp_path / "nope" / "python"))
    with pytest.raises(FileNotFoundError, match="install-peers.sh"):
        P.peer_python()


def _peer_python_or_skip() -> str:
    try:
        return P.peer_python()
    except FileNotFoundError:
        pytest.skip("no peers environment (bash scripts/install-peers.sh): RecTools is not installed")


@pytest.mark.slow
def test_real_rectools_sasrec_returns_unseen_lists(tmp_path):
    python = _peer_python_or_skip()
    rng = np.random.default_rng(0)
    log = pd.DataFrame({"user": np.repeat([f"u{i}" for i in range(40)], 6),
                        "item": [f"i{j}" for j in rng.integers(0, 30, 240)],
                        "timestamp": np.tile(np.arange(6), 40)})
    log = log.drop_duplicates(["user", "item"])
    ds = assemble("peer", log, None, has_time=True, has_text=False)
    split = leave_one_out(ds.interactions)
    evalset = P.export(split, "test", 50, "last", tmp_path)
    timing = P.train_and_list(python, tmp_path, {"n_factors": 8, "session_max_len": 5, "batch_size": 16}, (1, 2), seed=0)
    assert [c["epochs"] for c in timing["checkpoints"]] == [1, 2]
    recs = pd.read_parquet(tmp_path / "recs_e2.parquet")
    topk = P.lists_from_recs(recs, evalset, split.history("test"), k=10)
    assert (topk[:, 0] != PAD).all()  # every evaluated user got a list
    hist = split.history("test")
    for row, user in enumerate(evalset.batch.users):
        seen = set(hist.loc[hist["user_id"] == user, "item_id"])
        assert not seen & set(recs.loc[recs["user_id"] == user, "item_id"])  # the peer filtered seen items itself
        assert not seen & set(topk[row][topk[row] != PAD].tolist())


def test_only_a_reads_the_settings_tuned_by_protocol_b(tmp_path, monkeypatch):
    import bench.protocol_b as B

    monkeypatch.setattr(B, "RESULTS", tmp_path)
    with pytest.raises(SystemExit, match="holds no tuned_on_valid; run protocol B first"):
        B.tuned_before("amazon-beauty")
    chosen = {"item2item": {"params": {"window": 5}, "valid_N@10": 0.05}}
    (tmp_path / "protocol_b_amazon-beauty.json").write_text(json.dumps({"tuned_on_valid": chosen}))
    assert B.tuned_before("amazon-beauty") == chosen
