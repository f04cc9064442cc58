"""PNG plots of an evaluation report (matplotlib, headless)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.core.artifacts import atomic_write_bytes  # noqa: E402


def _save(fig, path: Path) -> Path:
    import io

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def recall_vs_k(report: dict, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, ch in report["channels"].items():
        curve = ch["recall_vs_k"]
        ks = [int(k) for k in curve]
        ax.plot(ks, [curve[str(k)] for k in ks], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("k (length of the channel's list, log scale)")
    ax.set_ylabel("Recall@k (share of users whose target is in the list)")
    ax.set_title(f"Recall vs k per channel - {report['dataset']} ({report['stage']})")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, path)


def overlap(report: dict, path: Path) -> Path:
    names = report["overlap"]["channels"]
    mat = np.asarray(report["overlap"]["hits_both"], dtype=float)
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(names), 1.2 + 1.0 * len(names)))
    im = ax.imshow(mat, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{int(mat[i, j])}", ha="center", va="center",
                    color="white" if mat[i, j] > mat.max() / 2 else "black")
    ax.set_title("Users hit by both channels (at each budget)")
    fig.colorbar(im, ax=ax, label="users")
    return _save(fig, path)


def recall_by_bucket(report: dict, path: Path) -> Path:
    channels = report["channels"]
    names = list(channels)
    buckets = sorted({int(b) for ch in channels.values() for b in ch["recall_by_bucket"]})
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(6.8, 4.2))
    for i, name in enumerate(names):
        by = channels[name]["recall_by_bucket"]
        vals = [next(iter(v for k, v in by[str(b)].items() if k.startswith("R@")), 0.0) if str(b) in by else 0.0
                for b in buckets]
        ax.bar(np.array(buckets) + i * width, np.nan_to_num(vals), width, label=f"{name} (@{channels[name]['budget']})")
    ax.set_xticks(np.array(buckets) + width * (len(names) - 1) / 2,
                  [f"{b}{' (head)' if b == 0 else ' (tail)' if b == buckets[-1] else ''}" for b in buckets])
    ax.set_xlabel("target popularity bucket (equal shares of interactions)")
    ax.set_ylabel("Recall at the channel's budget")
    ax.set_title("Recall by popularity of the target item")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def latency_cdf(report: dict, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, ms in report.get("latency_samples_ms", {}).items():
        xs = np.sort(np.asarray(ms))
        ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=name)
    ax.set_xscale("log")
    ax.set_xlabel("latency per request, in-process (ms, log scale)")
    ax.set_ylabel("share of requests")
    ax.set_title("Latency distribution (one request at a time)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def all_plots(report: dict, out_dir: Path) -> dict[str, Path]:
    out = {}
    if report.get("channels"):
        out["recall_vs_k"] = recall_vs_k(report, out_dir / "recall_vs_k.png")
        out["overlap"] = overlap(report, out_dir / "channel_overlap.png")
        out["recall_by_bucket"] = recall_by_bucket(report, out_dir / "recall_by_popularity.png")
    if report.get("latency_samples_ms"):
        out["latency"] = latency_cdf(report, out_dir / "latency_cdf.png")
    return out
