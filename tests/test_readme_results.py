"""The README results table is generated from bench/results/summary.json and must match it."""
import json

from bench.readme_table import README, SUMMARY, render, updated_readme


def test_readme_table_matches_summary_json():
    text = README.read_text()
    assert updated_readme(text, render(json.loads(SUMMARY.read_text()))) == text, (
        "README results table is stale: run `python -m bench.readme_table`"
    )


def test_render_uses_the_json_values():
    table = render({"amazon-beauty": {"item2item": {"R@5": 0.1, "N@5": 0.2, "R@10": 0.3, "N@10": 0.4}}})
    assert "| amazon-beauty | item2item | 0.1000 | 0.2000 | 0.3000 | 0.4000 | this project |" in table
    assert "BSARec" in table
