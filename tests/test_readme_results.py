"""The README results table is generated from bench/results/summary.json and must match it."""
import json

from bench.readme_table import README, SUMMARY, render, updated_readme


def test_readme_table_matches_summary_json():
    text = README.read_text()
    assert updated_readme(text, render(json.loads(SUMMARY.read_text()))) == text, (
        "README results table is stale: run `python -m bench.readme_table`"
    )


def test_render_uses_the_json_values():
    table = render({"amazon-beauty": {"item2item": {"R@5": 0.1, "N@5": 0.2, "R@10": 0.3, "N@10": 0.4}},
                    "amazon-beauty-robust": {"item2item": {"R@10": 0.25, "N@10": 0.15, "R@10_std": 0.002,
                                                           "N@10_std": 0.001, "seeds": [1, 2, 3]},
                                             "cascade_mtgr": {"R@10": 0.12, "N@10": 0.07, "seeds": [1]}}})
    assert ("| amazon-beauty | item2item | 0.1000 | 0.2000 | 0.3000 | 0.4000 | 0.2500 ± 0.0020 | 0.1500 ± 0.0010 "
            "| this project |") in table
    assert "| amazon-beauty | cascade_mtgr | - | - | - | - | 0.1200 | 0.0700 | this project |" in table  # B only
    assert "BSARec" in table
