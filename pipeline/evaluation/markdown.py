"""The evaluation report as Markdown, beside its JSON and PNG plots."""
from __future__ import annotations

from pathlib import Path

from pipeline.core.artifacts import atomic_write_text
from pipeline.evaluation.plots import all_plots


def _f(v, digits: int = 4) -> str:
    return "-" if v is None or v != v else f"{v:.{digits}f}"


def _arm_table(report: dict) -> list[str]:
    ks = report["ks"]
    cols = [f"R@{k}" for k in ks] + [f"N@{k}" for k in ks] + ["MRR", f"coverage@{max(ks)}", f"novelty@{max(ks)}"]
    lines = ["| arm | kind | " + " | ".join(cols) + " | diversity@10 | p50 ms | p99 ms |",
             "|---|---|" + "---|" * (len(cols) + 3)]
    pipeline = set(report.get("pipeline_arms", []))
    for name, r in report["arms"].items():
        lat = r.get("latency", {})
        lines.append(f"| {name} | {'pipeline' if name in pipeline else 'channel alone'} | "
                     + " | ".join(_f(r.get(c)) for c in cols)
                     + f" | {_f(r.get('diversity@10'))} | {_f(lat.get('p50_ms'), 2)} | {_f(lat.get('p99_ms'), 2)} |")
    return lines


def _channel_table(report: dict) -> list[str]:
    lines = ["| channel | budget | recall@budget | hits | unique hits | long-tail R | coverage@budget |",
             "|---|---|---|---|---|---|---|"]
    kmax = max(report["ks"])
    for name, c in report["channels"].items():
        tail = report["arms"][name].get(f"tail_R@{kmax}")
        lines.append(f"| {name} | {c['budget']} | {_f(c['recall'])} | {c['hits']} | {c['unique_hits']} | "
                     f"{_f(tail)} (@{kmax}) | {_f(c['coverage@budget'])} |")
    return lines


def _bootstrap_table(report: dict) -> list[str]:
    boot = report.get("bootstrap") or {}
    if not boot:
        return []
    lines = [f"Paired bootstrap (users resampled) of each arm minus the control **{boot['control']}**:", "",
             "| arm | metric | control | arm | diff | 95% CI | p | significant |", "|---|---|---|---|---|---|---|---|"]
    for arm, by in boot["arms"].items():
        for metric, r in by.items():
            lines.append(f"| {arm} | {metric} | {_f(r['mean_a'])} | {_f(r['mean_b'])} | {r['diff']:+.4f} | "
                         f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] | {r['p_value']:.3f} | {'yes' if r['significant'] else 'no'} |")
    return lines


def _unique_table(report: dict) -> list[str]:
    uniq = report.get("unique_after_ranking") or {}
    if not uniq:
        return []
    lines = ["Hits in each arm's top 10 that only one of its channels' pools held (what that channel alone "
             "brought to the final list):", "", "| arm | hits@10 | only from |", "|---|---|---|"]
    for arm, by in uniq.items():
        parts = ", ".join(f"{ch} {n}" for ch, n in by.items() if ch != "hits@10")
        lines.append(f"| {arm} | {by['hits@10']} | {parts} |")
    return lines


def render_markdown(report: dict, plots: dict[str, Path]) -> str:
    out = [f"# Evaluation: {report['dataset']} ({report['stage']} split)", "",
           f"Protocol: leave-one-out, full catalog, seen items excluded, {report['users']} users. "
           "Every arm and channel is scored on the same users.", "", "## Arms", ""]
    out += _arm_table(report) + [""]
    if report.get("channels"):
        out += ["## Channels", "", "Recall, hits and unique hits (targets no other channel found) at each "
                "channel's budget (its pool quota); long-tail recall on targets outside the 20% most popular items.", ""]
        out += _channel_table(report) + [""]
    out += _bootstrap_table(report) + [""]
    out += _unique_table(report) + ([""] if report.get("unique_after_ranking") else [])
    titles = {"recall_vs_k": "Recall vs k", "overlap": "Channel overlap of hits",
              "recall_by_bucket": "Recall by popularity bucket", "latency": "Latency distribution"}
    for key, path in plots.items():
        out += [f"## {titles[key]}", "", f"![{titles[key]}]({Path(path).name})", ""]
    return "\n".join(out)


def write_markdown(report: dict, out_dir: Path) -> Path:
    plots = all_plots(report, Path(out_dir))
    path = Path(out_dir) / "report.md"
    atomic_write_text(path, render_markdown(report, plots))
    return path
