"""COBRA channel: content encoder, semantic-ID tokenizers, report and trie (no training)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from channels.cobra.encoder import ContentEncoder, EncoderConfig, item_documents
from channels.cobra.rqvae import RQVAE
from channels.cobra.semantic_ids import IdConfig, ResidualKMeans, code_report, disambiguate, group_ids
from channels.cobra.trie import CodeTrie
from pipeline.data import leave_one_out, synthesize


@pytest.fixture(scope="module")
def synth():
    ds = synthesize(n_users=300, n_items=150, seed=3)
    return ds, leave_one_out(ds.interactions).train


def test_item_documents_tokens():
    items = pd.DataFrame({"item_id": [0, 1], "title": ["Red Nail Polish", ""], "categories": ["Beauty|Nail Care", ""],
                          "brand": ["O.P.I", "Unknown"]})
    docs = item_documents(items)
    assert docs[0] == "Red Nail Polish c_beauty c_nail_care b_o_p_i"
    assert docs[1] == ""  # unknown brand and empty fields add nothing


def test_tfidf_encoder_vectors_are_normalised_and_deterministic(synth):
    ds, train = synth
    cfg = EncoderConfig(svd_dim=8, collab="covisit", collab_dim=4, seed=1)
    a = ContentEncoder(cfg).fit(ds.items, train, ds.n_items).transform(ds.items)
    b = ContentEncoder(cfg).fit(ds.items, train, ds.n_items).transform(ds.items)
    assert a.shape == (ds.n_items, 12)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(a, b)


def test_collaborative_vectors_alone_when_there_is_no_text(synth):
    ds, train = synth
    items = ds.items.assign(title="", categories="", brand="")
    enc = ContentEncoder(EncoderConfig(collab="covisit", collab_dim=6)).fit(items, train, ds.n_items)
    x = enc.transform(items)
    assert x.shape == (ds.n_items, 6) and enc.text_dim_ == 0
    with pytest.raises(ValueError, match="no text"):
        ContentEncoder(EncoderConfig(collab="none")).fit(items, train, ds.n_items)
    with pytest.raises(ValueError, match="needs text or collaborative"):
        EncoderConfig(text="none", collab="none")


def test_new_item_without_interactions_gets_collaborative_part_from_text(synth):
    ds, train = synth
    enc = ContentEncoder(EncoderConfig(svd_dim=8, collab="covisit", collab_dim=4)).fit(ds.items, train, ds.n_items)
    new = ds.items.iloc[[0]].assign(item_id=ds.n_items)  # an unseen id: no co-visitation row
    x = enc.transform(new)
    assert np.abs(x[0, 8:]).sum() > 0  # ridge estimate, not zeros


def test_sentence_encoder_is_optional_and_never_downloads(tmp_path):
    with pytest.raises(ValueError, match="sentence_model"):
        EncoderConfig(text="sentence")
    enc = ContentEncoder(EncoderConfig(text="sentence", sentence_model=str(tmp_path / "absent")))
    with pytest.raises(FileNotFoundError, match="no hub download"):
        enc.fit(pd.DataFrame({"item_id": [0], "title": ["x"]}), None, 1)


def test_residual_kmeans_codes_valid_and_deterministic(synth):
    ds, train = synth
    x = ContentEncoder(EncoderConfig(svd_dim=8)).fit(ds.items, train, ds.n_items).transform(ds.items)
    q1 = ResidualKMeans((8, 4, 4), n_iter=10, seed=0).fit(x)
    q2 = ResidualKMeans((8, 4, 4), n_iter=10, seed=0).fit(x)
    c1, c2 = q1.encode(x), q2.encode(x)
    assert c1.shape == (ds.n_items, 3)
    assert (c1 >= 0).all() and (c1 < np.array([8, 4, 4])).all()
    np.testing.assert_array_equal(c1, c2)
    assert len(np.unique(c1[:, 0])) == 8  # every first-level code used


def test_residual_kmeans_with_fewer_points_than_codes():
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    codes = ResidualKMeans((8,), n_iter=5).fit(x).encode(x)
    assert (codes < 5).all() and len(np.unique(codes)) == 5


def test_code_report_on_a_hand_made_case():
    codes = np.array([[0, 0], [0, 0], [0, 1], [1, 2]])
    rep = code_report(codes, (2, 4), popularity=np.array([10, 0, 5, 1]))
    full = rep["full_code"]
    assert full["distinct"] == 3
    assert full["collision_rate"] == pytest.approx(0.5)  # items 0 and 1 share (0, 0)
    assert full["duplicate_rate"] == pytest.approx(0.25)
    assert full["items_per_code_max"] == 2
    assert full["codes_by_size_1..9_10plus"][:2] == [2, 1]
    l0, l1 = rep["levels"]
    assert (l0["used"], l0["utilisation"], l0["prefixes"], l0["items_per_prefix_max"]) == (2, 1.0, 2, 3)
    assert (l1["used"], l1["utilisation"], l1["prefixes"]) == (3, 0.75, 3)
    assert rep["popularity"]["mean_popularity_shared_code"] == pytest.approx(5.0)
    assert rep["popularity"]["interaction_share_of_shared_codes"] == pytest.approx(10 / 16)


def test_disambiguation_makes_codes_unique():
    codes = np.array([[0, 0], [0, 0], [0, 1], [0, 0]])
    extra = disambiguate(codes)
    np.testing.assert_array_equal(extra, [0, 1, 0, 2])
    full = np.c_[codes, extra]
    assert len(group_ids(full)[1]) == 4


def test_id_config_rejects_bad_values():
    with pytest.raises(ValueError, match="quantizer"):
        IdConfig(quantizer="pq")
    with pytest.raises(ValueError, match="levels"):
        IdConfig(levels=(256, 1))


def test_trie_tables_and_leaves():
    codes = np.array([[0, 1], [0, 1], [1, 0], [2, 2]])
    trie = CodeTrie.build(codes, (3, 3), active=np.array([True, True, True, False]))
    root = trie.child[0].numpy()[0]
    assert (root >= 0).tolist() == [True, True, False]  # code 2 only belongs to an inactive item
    assert trie.contains(np.array([[0, 1], [1, 0], [2, 2], [0, 0]])).tolist() == [True, True, False, False]
    leaf = trie.leaf_of(np.array([[0, 1]]))[0]
    assert sorted(trie.leaf_items[trie.leaf_ptr[leaf] : trie.leaf_ptr[leaf + 1]].tolist()) == [0, 1]
    assert trie.item_leaf[3] == -1
    with pytest.raises(ValueError, match="out of range"):
        CodeTrie.build(np.array([[0, 3]]), (3, 3))


def test_rqvae_codes_valid_deterministic_and_dead_codes_restarted(tmp_path):
    x = np.random.default_rng(0).normal(size=(200, 6)).astype(np.float32)
    q = RQVAE((16, 8), hidden=16, d_latent=4, epochs=15, seed=0).fit(x)
    codes = q.encode(x)
    assert codes.shape == (200, 2) and (codes[:, 0] < 16).all() and (codes[:, 1] < 8).all()
    np.testing.assert_array_equal(codes, RQVAE((16, 8), hidden=16, d_latent=4, epochs=15, seed=0).fit(x).encode(x))
    assert len(q.history_) == 15 and q.history_[-1]["loss"] < q.history_[0]["loss"]
    q.save(tmp_path)
    np.testing.assert_array_equal(RQVAE.load(tmp_path).encode(x), codes)
    # dead-code restart on a batch that uses 4 of level 0's 16 codes and every code of level 1
    import torch

    used = torch.tensor([[i % 4, i % 8] for i in range(32)])
    residuals = [torch.arange(32 * 4, dtype=torch.float32).reshape(32, 4) + 1000 * lv for lv in range(2)]
    before = [b.detach().clone() for b in q.net_.codebooks]
    restarted = q._restart_dead(used, residuals, torch.Generator().manual_seed(0))
    after = [b.detach() for b in q.net_.codebooks]
    assert restarted == 12
    assert torch.equal(after[0][:4], before[0][:4]) and torch.equal(after[1], before[1])  # used codes stay
    rows = {tuple(r.tolist()) for r in residuals[0]}
    assert all(tuple(after[0][c].tolist()) in rows for c in range(4, 16))  # dead codes moved onto data


def test_sentence_transformer_from_a_local_path(synth):
    st = pytest.importorskip("sentence_transformers")  # the optional extra
    import os

    path = os.environ.get("HYBRIDREC_ST_MODEL")
    if not path:
        pytest.skip("set HYBRIDREC_ST_MODEL to a local sentence-transformer folder")
    ds, train = synth
    x = ContentEncoder(EncoderConfig(text="sentence", sentence_model=path)).fit(ds.items, train, ds.n_items).transform(ds.items)
    assert x.shape[0] == ds.n_items and st is not None


def test_beauty_config_builds_every_cobra_channel():
    from pathlib import Path

    from pipeline.config import load_config
    from pipeline.registry import build_channel

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "amazon-beauty-cobra.yaml")
    modes = {build_channel(c).mode for c in cfg.channels if c.kind == "cobra"}
    assert modes == {"cobra", "cobra_sparse", "tiger"}
