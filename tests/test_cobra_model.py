"""COBRA channel: the model (golden values with a fixed seed, causality) and its training loss."""
from __future__ import annotations

import pytest
import torch

from channels.cobra.model import CobraModel, ModelConfig
from channels.cobra.train import BatchLoss, TrainConfig
from channels.sequence import build_windows

# the first design (MLP heads, 0.02 embeddings): pinned so its golden values stay checked
CFG = ModelConfig(code_sizes=(4, 3), n_tokens=6, content_dim=3, n_price=3, n_items=5, d_model=8, n_layers=1,
                  n_heads=2, d_ff=16, max_len=4, dropout=0.0, dense=True, dense_dim=4, dense_head="mlp",
                  item_head="mlp", embed_std=0.02)
# the default design: identity dense head, linear item head, d ** -0.5 embeddings
DEFAULT = ModelConfig(code_sizes=(4, 3), n_tokens=6, content_dim=3, n_price=3, n_items=5, d_model=8, n_layers=1,
                      n_heads=2, d_ff=16, max_len=4, dropout=0.0, dense=True, dense_dim=8)
FEATS = {"tokens": torch.tensor([[1, 2], [3, 0], [4, 5]]), "weights": torch.tensor([[0.6, 0.8], [1.0, 0.0], [0.5, 0.5]]),
         "content": torch.tensor([[0.1, 0.2, 0.3], [0.0, 1.0, 0.0], [0.5, -0.5, 0.1]]),
         "price": torch.tensor([1, 2, 0]), "ids": torch.tensor([1, 0, 3])}
CODES = torch.tensor([[0, 0], [1, 2], [3, 1]])  # item -> (level 0, level 1)


def _model() -> CobraModel:
    torch.manual_seed(0)
    return CobraModel(CFG).eval()


def _close(got: torch.Tensor, want: list[float]) -> None:
    torch.testing.assert_close(got, torch.tensor(want), rtol=1e-4, atol=1e-6)


def test_golden_values_with_a_fixed_seed():
    m = _model()
    with torch.no_grad():
        v = m.item_encoder(FEATS)
        h = m.encode(CODES[None], v[None], torch.tensor([[False, True, True]]))
        logits, v_hat = m.teacher_forced(h[:, -1], torch.tensor([[2, 1]]))
    _close(v[0], [-3.821784e-04, -1.410430e-06, 1.175940e-03, -2.518069e-03])
    _close(h[0, -1, :4], [0.181578, -2.247918, 0.937642, -0.566205])
    _close(logits[0][0], [0.002035, 0.000634, 0.001953, 0.000680])
    _close(logits[1][0], [-0.000671, -0.001456, 0.000531])
    _close(v_hat[0], [0.001408, 0.001841, 0.000571, -0.000278])


def test_golden_training_loss():
    m = _model()
    fn = BatchLoss(m, CODES, FEATS, torch.log(torch.tensor([0.5, 0.3, 0.2])), TrainConfig(id_dropout=0.0, temperature=0.1))
    with torch.no_grad():
        out = fn(torch.tensor([[-1, 0, 1], [0, 2, 1]]), torch.tensor([[-1, 1, 2], [2, 1, 0]]))
    assert float(out["sparse"]) == pytest.approx(1.242205, abs=1e-5)
    assert float(out["dense"]) == pytest.approx(3.087277, abs=1e-4)
    assert float(out["loss"]) == pytest.approx(1.242205 + 3.087277, abs=1e-4)


def test_golden_values_of_the_default_design_and_its_dot_loss():
    torch.manual_seed(0)
    m = CobraModel(DEFAULT).eval()
    with torch.no_grad():
        v = m.item_encoder(FEATS)
        h = m.encode(CODES[None], v[None], torch.tensor([[False, True, True]]))
        _, v_hat = m.teacher_forced(h[:, -1], torch.tensor([[2, 1]]))
        fn = BatchLoss(m, CODES, FEATS, None, TrainConfig(id_dropout=0.0, temperature=1.0, similarity="dot", negatives="full"))
        out = fn(torch.tensor([[-1, 0, 1], [0, 2, 1]]), torch.tensor([[-1, 1, 2], [2, 1, 0]]))
    torch.testing.assert_close(v_hat, h[:, -1] + m.code_cond[0].weight[2] + m.code_cond[1].weight[1])  # identity head
    _close(v[0, :4], [0.030643, 0.030737, -0.001323, 0.029854])
    _close(h[0, -1, :4], [0.033754, -1.006867, -0.135525, 0.415446])
    assert float(out["sparse"]) == pytest.approx(1.242087, abs=1e-5)
    assert float(out["dense"]) == pytest.approx(1.133893, abs=1e-4)


def test_model_config_rejects_bad_heads():
    with pytest.raises(ValueError, match="dense_head must be one of"):
        ModelConfig(code_sizes=(4,), dense_head="deep")
    with pytest.raises(ValueError, match="item_head must be one of"):
        ModelConfig(code_sizes=(4,), item_head="identity")
    with pytest.raises(ValueError, match="needs dense_dim == d_model"):
        ModelConfig(code_sizes=(4,), d_model=8, dense_dim=4)


def test_history_states_are_causal_and_ignore_padding():
    m = _model()
    v = torch.randn(1, 3, 4)
    with torch.no_grad():
        a = m.encode(CODES[None], v, torch.tensor([[True, True, True]]))
        changed = CODES.clone()
        changed[2] = torch.tensor([0, 2])  # change the last item only
        b = m.encode(changed[None], v, torch.tensor([[True, True, True]]))
        torch.testing.assert_close(a[0, :2], b[0, :2])  # earlier positions do not see the future
        assert not torch.allclose(a[0, 2], b[0, 2])
        # a padded position's content does not leak into real positions
        p1 = m.encode(CODES[None], v, torch.tensor([[False, True, True]]))
        v2 = v.clone()
        v2[0, 0] = 100.0
        p2 = m.encode(torch.cat([CODES[2:], CODES[1:]])[None], v2, torch.tensor([[False, True, True]]))
        torch.testing.assert_close(p1[0, 1:], p2[0, 1:])


def test_cascaded_head_level_l_depends_only_on_earlier_levels():
    m = _model()
    h = torch.randn(2, 8)
    with torch.no_grad():
        l1, d1 = m.teacher_forced(h, torch.tensor([[0, 0], [1, 1]]))
        l2, d2 = m.teacher_forced(h, torch.tensor([[0, 2], [2, 1]]))
    torch.testing.assert_close(l1[0], l2[0])  # level 0 sees no code
    torch.testing.assert_close(l1[1][0], l2[1][0])  # row 0: same level-0 code
    assert not torch.allclose(l1[1][1], l2[1][1])  # row 1: different level-0 code
    assert not torch.allclose(d1[0], d2[0])  # the dense head reads the full ID


def test_dense_levels_conditions_the_dense_head_on_a_prefix():
    torch.manual_seed(0)
    m = CobraModel(ModelConfig(**{**CFG.__dict__, "dense_levels": 1})).eval()
    h = torch.randn(1, 8)
    with torch.no_grad():
        _, d1 = m.teacher_forced(h, torch.tensor([[1, 0]]))
        _, d2 = m.teacher_forced(h, torch.tensor([[1, 2]]))
    torch.testing.assert_close(d1, d2)


def _trie_child():
    from channels.cobra.trie import CodeTrie

    return list(CodeTrie.build(CODES.numpy(), (4, 3)).child)


def test_drawn_ids_are_existing_ids_and_seeded():
    m = _model()
    h = torch.randn(64, 8)
    a = m.sample_codes(h, _trie_child(), torch.Generator().manual_seed(1))
    b = m.sample_codes(h, _trie_child(), torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    assert {tuple(r) for r in a.tolist()} <= {tuple(r) for r in CODES.tolist()}
    assert len({tuple(r) for r in a.tolist()}) > 1  # a draw, not the argmax


def test_dense_condition_modes():
    inputs, targets = torch.tensor([[-1, 0, 1], [0, 2, 1]]), torch.tensor([[-1, 1, 2], [2, 1, 0]])

    def loss(**kw):
        m = _model()
        fn = BatchLoss(m, CODES, FEATS, None, TrainConfig(id_dropout=0.0, **kw), _trie_child())
        with torch.no_grad():
            return fn(inputs, targets, torch.Generator().manual_seed(0))

    teacher = loss(dense_condition="teacher")
    assert float(loss(dense_condition="mixed", teacher_prob=1.0)["dense"]) == pytest.approx(float(teacher["dense"]))
    drawn = loss(dense_condition="sampled")
    assert float(drawn["sparse"]) == pytest.approx(float(teacher["sparse"]))  # the sparse loss stays teacher-forced
    assert float(drawn["dense"]) != pytest.approx(float(teacher["dense"]), abs=1e-6)
    with pytest.raises(ValueError, match="dense_condition must be one of"):
        TrainConfig(dense_condition="beam")
    with pytest.raises(ValueError, match="teacher_prob must be in"):
        TrainConfig(teacher_prob=1.5)


def test_sampled_negatives_loss_golden_and_its_full_catalog_limit():
    import numpy as np

    from channels.sequence import NegativeSampler

    inputs, targets = torch.tensor([[-1, 0, 1], [0, 2, 1]]), torch.tensor([[-1, 1, 2], [2, 1, 0]])
    sampler = NegativeSampler(np.array([3.0, 1.0, 2.0]), "popularity", 0.75)

    def dense(negatives: str, n: int = 4) -> float:
        cfg = TrainConfig(id_dropout=0.0, negatives=negatives, n_negatives=n, temperature=0.1)
        fn = BatchLoss(_model(), CODES, FEATS, None, cfg, None, sampler, np.random.default_rng(0))
        with torch.no_grad():
            return float(fn(inputs, targets)["dense"])

    assert dense("sampled") == pytest.approx(3.244261, abs=1e-4)
    # with many draws every item is in the set with probability ~1, logQ ~ 0: the full softmax
    assert dense("sampled", 10_000) == pytest.approx(dense("full"), abs=1e-4)


def test_tied_input_feeds_the_item_vector_itself():
    torch.manual_seed(0)
    m = CobraModel(ModelConfig(**{**DEFAULT.__dict__, "tied_input": True})).eval()
    v = torch.randn(1, 3, 8)
    with torch.no_grad():
        a = m.encode(CODES[None], v, torch.tensor([[True, True, True]]))
        b = m.backbone(sum(e(CODES[None][..., i]) for i, e in enumerate(m.code_in)) + v, torch.tensor([[True, True, True]]))
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="tied_input needs dense_dim == d_model"):
        ModelConfig(code_sizes=(4,), d_model=8, dense_dim=4, dense_head="linear", tied_input=True)


def test_bad_head_count_is_rejected():
    with pytest.raises(ValueError, match="divisible"):
        CobraModel(ModelConfig(code_sizes=(4,), d_model=10, n_heads=3, dense_dim=10))


def test_windows_make_every_position_a_target():
    import pandas as pd

    frame = pd.DataFrame({"user_id": [0, 0, 0, 0, 1, 1], "item_id": [5, 6, 7, 8, 1, 2]})
    w = build_windows(frame, max_len=2)
    pairs = {(int(i), int(t)) for row_i, row_t in zip(w.inputs, w.targets) for i, t in zip(row_i, row_t) if t >= 0}
    assert pairs == {(5, 6), (6, 7), (7, 8), (1, 2)}


def test_residual_conditioning_starts_unconditioned_and_learns_per_code_offsets():
    cfg = ModelConfig(**{**DEFAULT.__dict__, "dense_cond": "residual", "dense_levels": 1})
    torch.manual_seed(0)
    m = CobraModel(cfg).eval()
    h = torch.randn(3, 8)
    codes = torch.tensor([[0, 1], [2, 0], [3, 2]])
    # zero-initialised: the conditioned vector is the history state's own until training moves it
    torch.testing.assert_close(m.dense_vector(m.conditioned_state(h, codes)), m.dense_vector(h))
    with torch.no_grad():
        m.dense_cond[0].weight[2] = 1.0
    got = m.conditioned_state(h, codes)
    torch.testing.assert_close(got[1], h[1] + 1.0)  # level-0 code 2 moves it
    torch.testing.assert_close(got[[0, 2]], h[[0, 2]])
    assert len(m.dense_cond) == 1  # only the first level conditions it
    # the sparse head's conditioning is untouched by the dense head's embeddings
    torch.testing.assert_close(m.condition(h, 0, codes[:, 0]), h + m.code_cond[0](codes[:, 0]))
    with pytest.raises(ValueError, match="dense_cond must be one of"):
        ModelConfig(**{**DEFAULT.__dict__, "dense_cond": "gated"})


def test_beams_carry_the_residual_dense_state():
    from channels.cobra.beam import beam_search
    from channels.cobra.trie import CodeTrie

    cfg = ModelConfig(**{**DEFAULT.__dict__, "dense_cond": "residual"})
    torch.manual_seed(0)
    m = CobraModel(cfg).eval()
    for emb in m.dense_cond:
        torch.nn.init.normal_(emb.weight)
    h = torch.randn(2, 8)
    beams = beam_search(m, h, CodeTrie.build(CODES.numpy(), (4, 3)), 3)
    want = m.conditioned_state(h[:, None, :].expand(-1, 3, -1), beams.codes)
    torch.testing.assert_close(beams.dense_state, want)


def test_the_unconditioned_vector_can_share_the_dense_loss():
    inputs, targets = torch.tensor([[-1, 0, 1], [0, 2, 1]]), torch.tensor([[-1, 1, 2], [2, 1, 0]])
    cfg = ModelConfig(**{**CFG.__dict__, "dense_cond": "residual", "dense_levels": 1})

    def loss(weight: float):
        torch.manual_seed(0)
        fn = BatchLoss(CobraModel(cfg).eval(), CODES, FEATS, None, TrainConfig(id_dropout=0.0, uncond_weight=weight))
        with torch.no_grad():
            return fn(inputs, targets)

    plain, both = loss(0.0), loss(0.5)
    assert "dense_uncond" not in plain
    # zero-initialised offsets: the unconditioned loss equals the conditioned one at the start
    assert float(both["dense_uncond"]) == pytest.approx(float(both["dense"]))
    assert float(both["loss"]) == pytest.approx(float(plain["loss"]) + 0.5 * float(plain["dense"]), abs=1e-6)
    with pytest.raises(ValueError, match="uncond_weight must be >= 0"):
        TrainConfig(uncond_weight=-1.0)
