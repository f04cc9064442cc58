"""bench/summary.py: every quality entry says which seeds it stands on."""
from __future__ import annotations

import json

from bench import summary


def test_one_split_entries_get_seeds_and_null_spreads(tmp_path, monkeypatch):
    monkeypatch.setattr(summary, "RESULTS", tmp_path)
    monkeypatch.setattr(summary, "SUMMARY", tmp_path / "summary.json")
    summary.record("amazon-beauty", "two_tower", {"R@10": 0.0872, "N@10": 0.0482, "command": "c"})
    summary.record("amazon-beauty-robust", "two_tower", {"R@10": 0.0872, "N@10": 0.0482, "command": "c"})
    summary.record("amazon-beauty-robust", "cascade", {"R@10": 0.12, "R@10_std": 0.002, "N@10_std": 0.001, "seeds": [1, 2, 3]})
    summary.record("speed", "cobra_beam20_p50_ms", {"value": 4.0})
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["amazon-beauty"]["two_tower"] == {"R@10": 0.0872, "N@10": 0.0482, "command": "c",
                                                       "seeds": ["file order"], "R@10_std": None, "N@10_std": None}
    assert data["amazon-beauty-robust"]["two_tower"]["seeds"] == [1]
    assert data["amazon-beauty-robust"]["cascade"] == {"R@10": 0.12, "R@10_std": 0.002, "N@10_std": 0.001, "seeds": [1, 2, 3]}
    assert data["speed"]["cobra_beam20_p50_ms"] == {"value": 4.0}


def test_normalize_file_rewrites_old_entries_once(tmp_path, monkeypatch):
    monkeypatch.setattr(summary, "RESULTS", tmp_path)
    monkeypatch.setattr(summary, "SUMMARY", tmp_path / "summary.json")
    (tmp_path / "summary.json").write_text(json.dumps({"amazon-toys-robust": {"item2item": {"R@10": 0.05}},
                                                       "speed": {"x": {"R@10": 1}}}))
    assert summary.normalize_file() == 1
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["amazon-toys-robust"]["item2item"]["seeds"] == [1] and data["speed"]["x"] == {"R@10": 1}
    assert summary.normalize_file() == 0
