"""MTGR: golden values, one pass == per-candidate reference, the dynamic mask, the ablation
switches, and the ranker's fit / score / save / load round trip."""
import pytest
import torch

from rankers.mtgr import MTGR, MTGRConfig, MTGRInputs, forward_flops

N_ITEMS, N_CROSS = 40, 5


def _model(seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = MTGRConfig(n_items=N_ITEMS, attr_sizes=(4, 6), n_price_buckets=3, n_cross=N_CROSS, d_model=16,
                     n_heads=2, dropout=0.0, id_dropout=0.0, **overrides)
    gen = torch.Generator().manual_seed(1)
    attrs = torch.stack([torch.randint(0, 4, (N_ITEMS,), generator=gen), torch.randint(0, 6, (N_ITEMS,), generator=gen)], 1)
    model = MTGR(cfg, attrs, torch.randint(0, 3, (N_ITEMS,), generator=gen)).eval()
    with torch.no_grad():  # non-zero relative biases so the test exercises them
        for block in model.blocks:
            block.rab.pos.normal_(0, 0.5, generator=gen)
            block.rab.time.normal_(0, 0.5, generator=gen)
    return model


def _inputs(b=3, l=6, m=7, seed=2):
    g = torch.Generator().manual_seed(seed)
    hist = torch.randint(1, N_ITEMS + 1, (b, l), generator=g)
    hist[0, :2] = 0  # left padding
    cand = torch.randint(1, N_ITEMS + 1, (b, m), generator=g)
    cand[1, m - 2 :] = 0  # a shorter pool
    age = torch.sort(torch.rand(b, l, generator=g) * 3e7, dim=1, descending=True).values
    return MTGRInputs(torch.randn(b, 3, generator=g), hist, torch.arange(l, 0, -1).expand(b, l).clone(), age,
                      cand, torch.randn(b, m, N_CROSS, generator=g))


def test_golden_values_with_fixed_seed():
    with torch.no_grad():
        scores, point = _model()(_inputs())
    expected = torch.tensor([-0.38069, -0.48296, -0.47344, -0.35099, -0.3012, -0.23188, -0.14565])
    torch.testing.assert_close(scores[0], expected, atol=1e-4, rtol=0)
    expected_point = torch.tensor([0.03655, 0.21017, 0.01911, 0.25213, 0.3323, 0.44276, 0.14788])
    torch.testing.assert_close(point[2], expected_point, atol=1e-4, rtol=0)
    assert torch.isinf(scores[1, -2:]).all() and (point[1, -2:] == 0).all()


@pytest.mark.parametrize("group_norm,cross", [(True, True), (False, True), (True, False)])
def test_one_pass_equals_per_candidate_reference(group_norm, cross):
    model = _model(group_norm=group_norm, cross_features=cross)
    inp = _inputs()
    with torch.no_grad():
        fast, fast_p = model(inp)
        ref, ref_p = model.forward_reference(inp)
    finite = torch.isfinite(ref)
    assert torch.equal(finite, torch.isfinite(fast))
    torch.testing.assert_close(fast[finite], ref[finite], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_p, ref_p, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        stacked, _ = model.forward_reference(inp, batched=True)
    torch.testing.assert_close(stacked[finite], ref[finite], atol=1e-5, rtol=1e-5)


def test_changing_one_candidate_never_changes_another():
    model = _model()
    inp = _inputs(m=9)
    with torch.no_grad():
        base, _ = model(inp)
        for j in range(9):
            items, cross = inp.cand_items.clone(), inp.cand_cross.clone()
            items[:, j] = (items[:, j] % N_ITEMS) + 1
            cross[:, j] += 3.0
            changed, _ = model(MTGRInputs(inp.user, inp.hist_items, inp.hist_dist, inp.hist_age, items, cross))
            others = torch.ones(9, dtype=torch.bool)
            others[j] = False
            torch.testing.assert_close(changed[:, others], base[:, others], atol=0, rtol=0)
            assert not torch.allclose(changed[0, j], base[0, j])
        # removing candidates (a smaller pool) does not change the rest either
        small, _ = model(MTGRInputs(inp.user, inp.hist_items, inp.hist_dist, inp.hist_age,
                                    inp.cand_items[:, :4], inp.cand_cross[:, :4]))
        torch.testing.assert_close(small, base[:, :4], atol=1e-6, rtol=1e-6)


def test_full_mask_ablation_lets_candidates_see_each_other():
    model = _model(mask="full")
    inp = _inputs()
    with torch.no_grad():
        base, _ = model(inp)
        items = inp.cand_items.clone()
        items[0, 0] = (items[0, 0] % N_ITEMS) + 1
        changed, _ = model(MTGRInputs(inp.user, inp.hist_items, inp.hist_dist, inp.hist_age, items, inp.cand_cross))
    assert not torch.allclose(changed[0, 1:], base[0, 1:])


def test_history_changes_every_candidate_and_padding_is_inert():
    model = _model()
    inp = _inputs()
    with torch.no_grad():
        base, _ = model(inp)
        hist = inp.hist_items.clone()
        hist[0, -1] = (hist[0, -1] % N_ITEMS) + 1
        moved, _ = model(MTGRInputs(inp.user, hist, inp.hist_dist, inp.hist_age, inp.cand_items, inp.cand_cross))
        assert not torch.allclose(moved[0], base[0])
        age = inp.hist_age.clone()
        age[0, :2] = 12345.0  # padded positions: any value, same scores
        same, _ = model(MTGRInputs(inp.user, inp.hist_items, inp.hist_dist, age, inp.cand_items, inp.cand_cross))
    torch.testing.assert_close(same, base, atol=0, rtol=0)


def test_group_norm_has_one_parameter_set_per_token_type():
    assert _model().norm_out.weight.shape == (3, 16)
    assert _model(group_norm=False).norm_out.weight.shape == (1, 16)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="divisible"):
        MTGRConfig(n_items=3, attr_sizes=(), n_price_buckets=1, n_cross=1, d_model=10, n_heads=3)
    with pytest.raises(ValueError, match="mask"):
        MTGRConfig(n_items=3, attr_sizes=(), n_price_buckets=1, n_cross=1, mask="causal")


def test_flop_count_grows_linearly_in_candidates_with_the_dynamic_mask():
    cfg = _model().cfg
    f100, f200, f400 = (forward_flops(cfg, 51, k) for k in (100, 200, 400))
    assert f400 - f200 == pytest.approx(2 * (f200 - f100))
    full = MTGRConfig(**{**cfg.__dict__, "mask": "full"})
    assert forward_flops(full, 51, 400) > forward_flops(cfg, 51, 400)
