"""Component params are typed and checked when a config loads (pipeline.params; issue 18)."""
from __future__ import annotations

import pytest
import yaml

from pipeline.config import ConfigError, apply_overrides, load_config
from pipeline.params import params_model, reference
from pipeline.registry import CHANNEL_KINDS, RANKER_KINDS, import_object


def _write(tmp_path, channels, ranker=None):
    cfg = {"data": {"source": "synthetic", "synthetic": {"n_users": 50, "n_items": 40}},
           "channels": channels, "ranker": ranker or {"kind": "passthrough"}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_misspelt_channel_param_fails_at_load_with_the_file_the_channel_and_the_key(tmp_path):
    path = _write(tmp_path, [{"name": "pop", "kind": "popularity", "params": {"half_life_dayz": 3}}])
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == (f"{path}: channel 'pop': bad parameters for PopularityChannel (kind 'popularity')\n"
                              "  params.half_life_dayz: unknown parameter")


def test_a_wrong_type_fails_at_load_and_names_the_value(tmp_path):
    path = _write(tmp_path, [{"name": "i2i", "kind": "item2item", "params": {"window": "five"}}])
    with pytest.raises(ConfigError, match=r"channel 'i2i': bad parameters for ItemToItemChannel \(kind 'item2item'\)\n"
                                          r"  params.window: .*integer.* \(got 'five'\)"):
        load_config(path)


def test_ranker_params_are_checked_on_overrides_too(tmp_path):
    path = _write(tmp_path, [{"name": "pop", "kind": "popularity"}], {"kind": "lgbm", "params": {"train_folds": 1}})
    cfg = load_config(path)
    with pytest.raises(ConfigError, match=r"<over>: ranker: bad parameters for LightGBMRanker \(kind 'lgbm'\)\n"
                                          r"  params.max_epochs: unknown"):
        apply_overrides(cfg, {"ranker.params.max_epochs": 3}, "<over>")


def test_every_shipped_config_loads_and_good_params_pass_unchanged(tmp_path):
    path = _write(tmp_path, [{"name": "i2i", "kind": "item2item", "params": {"window": 4, "pop_alpha": 0.5}}])
    assert load_config(path).channels[0].params == {"window": 4, "pop_alpha": 0.5}
    for name in ("quickstart", "amazon-beauty", "amazon-beauty-ab", "amazon-beauty-cobra", "synthetic-cascade"):
        load_config(f"configs/{name}.yaml")


def test_the_models_mirror_the_constructors():
    pop = params_model(import_object(CHANNEL_KINDS["popularity"]))
    assert pop.model_fields["half_life_days"].default == 7.0 and "name" not in pop.model_fields
    mtgr = params_model(import_object(RANKER_KINDS["mtgr"]))
    assert mtgr.model_validate({"max_epochs": 3}).max_epochs == 3
    assert params_model(import_object("rerank.reranker:RuleDiversityReRanker")) is None  # validates its own


def test_the_committed_reference_is_the_generated_one():
    from pathlib import Path
    assert Path("docs/config-reference.md").read_text() == reference(), \
        "regenerate: python -m pipeline.params docs/config-reference.md"


def test_cobra_takes_one_config_with_nested_parts_given_flat_or_nested():
    from channels.cobra.beam import BeamConfig
    from channels.cobra.channel import CobraChannel
    from channels.cobra.config import CobraConfig

    flat = CobraChannel(fusion_tau=2.0, lr=0.004, levels=[8, 8], index="hnsw", max_train_seconds=60)
    nested = CobraChannel(CobraConfig(beam={"tau": 2.0}, train={"lr": 0.004, "max_seconds": 60}, ids={"levels": [8, 8]},
                                      ann={"kind": "hnsw"}))
    assert flat.config == nested.config
    cfg = flat.config
    assert cfg.beam == BeamConfig(tau=2.0) and cfg.ids.levels == (8, 8) and cfg.ann.kind == "hnsw"
    # a part given as a mapping changes the channel's defaults, not the part's own
    assert cfg.train.negatives == "full" and cfg.train.similarity == "dot" and cfg.encoder.collab == "covisit"
    assert CobraConfig.model_validate(cfg.dump()) == cfg  # what params.json stores reads back the same
    assert cfg.with_(catalog_neighbors=7).beam.catalog_neighbors == 7 and cfg.beam.catalog_neighbors == 0
    with pytest.raises(TypeError, match="not both"):
        CobraChannel(cfg, beam_size=5)


def test_cobra_params_are_checked_at_load_flat_nested_and_derived(tmp_path):
    def fails(params, message):
        path = _write(tmp_path, [{"name": "gen", "kind": "cobra", "params": params}])
        with pytest.raises(ConfigError) as err:
            load_config(path)
        assert str(err.value).startswith(f"{path}: channel 'gen': bad parameters for CobraChannel (kind 'cobra')\n")
        assert message in str(err.value)

    fails({"fusion_tauu": 1.0}, "params.fusion_tauu: unknown parameter")
    fails({"beam": {"beam_sizes": 5}}, "params.beam.beam_sizes: Unexpected keyword argument")
    fails({"beam_size": "wide"}, "params.beam.beam_size: Input should be a valid integer")
    fails({"train": {"seed": 3}}, "train.seed is derived when fitting, not set")
    fails({"mode": "tiger", "cold_quota": 2}, "cold_quota must be >= 0, and 0 in mode 'tiger'")


def test_two_tower_takes_one_config_and_its_parameters_read_as_attributes():
    from channels.sequence import SequenceConfig
    from channels.two_tower.channel import TwoTowerChannel
    from channels.two_tower.config import TwoTowerConfig

    flat = TwoTowerChannel(d_model=32, dropout=0.1, lr=0.01, index="hnsw", use_content=False)
    nested = TwoTowerChannel(TwoTowerConfig(user={"d_model": 32, "dropout": 0.1}, train={"lr": 0.01},
                                            ann={"kind": "hnsw"}, item={"use_content": False}))
    assert flat.config == nested.config and flat.config.user == SequenceConfig(d_model=32, dropout=0.1)
    assert flat.config.train.loss == "sampled" and flat.config.train.batch_size == 256  # the channel's defaults
    assert (flat.d_model, flat.lr, flat.use_content, flat.num_threads) == (32, 0.01, False, 2)
    with pytest.raises(AttributeError, match=r"'lr' is a parameter of TwoTowerChannel: change it with configure\(lr=...\)"):
        flat.lr = 0.1
    assert flat.configure(lr=0.1).config.train.lr == 0.1
    flat.num_threads = 1  # runtime settings stay assignable (pipeline/scale.py sets them on a worker's copy)
    assert flat.config.num_threads == 1
    with pytest.raises(ValueError, match="loss must be one of"):
        flat.configure(loss="hinge")
    assert flat.config.train.loss == "sampled"  # a rejected change leaves the config as it was
