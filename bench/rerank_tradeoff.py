"""Accuracy/diversity trade-off of the MMR re-ranker over a lambda grid (Amazon Beauty, VALIDATION).

    python -m bench.rerank_tradeoff [--users 4000]

Pool: the item-to-item channel's top 100 (the strongest single channel), relevance = its order.
Item vectors: TF-IDF over title + categories + brand -> truncated SVD (64) -> L2-normalised.
For each lambda: R@10, N@10, intra-list diversity (1 - cosine of the content vectors, and share of
pairs in different categories) and category coverage (distinct categories in the top 10 / 10).
Writes bench/results/rerank_tradeoff.{json,md,png}; the default is chosen by the rule in `choose`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.decomposition import TruncatedSVD  # noqa: E402
from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: E402

from bench.summary import RESULTS  # noqa: E402
from channels.item2item import ItemToItemChannel  # noqa: E402
from pipeline.cascade import Cascade  # noqa: E402
from pipeline.core import metrics as M  # noqa: E402
from pipeline.data import default_data_root, leave_one_out, load_dataset  # noqa: E402
from pipeline.evaluation.harness import build_eval_set, run_topk  # noqa: E402
from pipeline.workflow import fit_data  # noqa: E402
from rerank.reranker import RuleDiversityReRanker  # noqa: E402

LAMBDAS = (1.0, 0.95, 0.9, 0.8, 0.7, 0.5, 0.3)
MAX_RELATIVE_NDCG_LOSS = 0.02


def content_vectors(items, dim: int = 64, seed: int = 0) -> np.ndarray:
    text = (items["title"].astype(str) + " " + items["categories"].astype(str).str.replace("|", " ")
            + " " + items["brand"].astype(str))
    tfidf = TfidfVectorizer(min_df=2, sublinear_tf=True).fit_transform(text)
    vec = TruncatedSVD(dim, random_state=seed).fit_transform(tfidf).astype(np.float32)
    return vec / np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-9)


def category_coverage(topk: np.ndarray, categories: np.ndarray, k: int = 10) -> float:
    lists = topk[:, :k]
    out = [len(set(categories[row[row >= 0]].tolist())) / k for row in lists]
    return float(np.mean(out))


def choose(rows: list[dict]) -> dict:
    """The most diverse lambda whose N@10 is within MAX_RELATIVE_NDCG_LOSS of lambda = 1."""
    base = next(r for r in rows if r["lambda"] == 1.0)["N@10"]
    ok = [r for r in rows if r["N@10"] >= base * (1 - MAX_RELATIVE_NDCG_LOSS)]
    return max(ok, key=lambda r: (r["ild_vectors"], r["lambda"]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=4000)
    ap.add_argument("--dataset", default="amazon-beauty-2014-5core")
    args = ap.parse_args(argv)
    ds = load_dataset("amazon", default_data_root() / args.dataset)
    split = leave_one_out(ds.interactions)
    i2i = ItemToItemChannel().fit(fit_data(ds, split, "valid", 0))
    evalset = build_eval_set(split, "valid", 50, max_users=args.users, seed=0)
    vectors = content_vectors(ds.items)
    cats = ds.items["category"].astype(str).astype("category").cat.codes.to_numpy(np.int64)
    rows = []
    for lam in LAMBDAS:
        reranker = RuleDiversityReRanker(**{"lambda": lam}).bind(ds.items, vectors=vectors, item_ids=ds.item_ids)
        cascade = Cascade([i2i], {"item2item": 100}, reranker=reranker, budget=100)
        topk, secs = run_topk(cascade.topk, evalset, 10, 512, desc=f"lambda {lam}")
        ranks = M.target_ranks(topk, evalset.targets)
        row = {"lambda": lam, "R@10": float(M.recall_at(ranks, 10).mean()), "N@10": float(M.ndcg_at(ranks, 10).mean()),
               "ild_vectors": M.intra_list_diversity(topk, item_vectors=vectors),
               "ild_categories": M.intra_list_diversity(topk, categories=cats),
               "category_coverage": category_coverage(topk, cats), "ms_per_user": 1e3 * secs / len(evalset)}
        print(json.dumps({k: round(v, 4) for k, v in row.items()}), flush=True)
        rows.append(row)
    best = choose(rows)
    out = {"dataset": ds.name, "split": "valid", "users": len(evalset), "pool": "item2item top 100",
           "vectors": "TF-IDF(title+categories+brand) -> SVD 64", "rows": rows, "chosen_lambda": best["lambda"],
           "rule": f"most diverse lambda with N@10 >= (1 - {MAX_RELATIVE_NDCG_LOSS}) x N@10 at lambda 1",
           "command": "python -m bench.rerank_tradeoff " + " ".join(argv if argv is not None else sys.argv[1:])}
    (RESULTS / "rerank_tradeoff.json").write_text(json.dumps(out, indent=1))
    _plot(rows, best)
    _markdown(out)
    return 0


def _plot(rows: list[dict], best: dict) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (x, y, xl, yl) in zip(axes, [("ild_vectors", "N@10", "intra-list diversity (1 - cosine, content vectors)", "NDCG@10"),
                                         ("category_coverage", "R@10", "category coverage (distinct categories / 10)", "Recall@10")]):
        ax.plot([r[x] for r in rows], [r[y] for r in rows], marker="o")
        for r in rows:
            ax.annotate(f"λ={r['lambda']}", (r[x], r[y]), textcoords="offset points", xytext=(4, 4), fontsize=8,
                        fontweight="bold" if r is best else "normal")
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"MMR accuracy/diversity trade-off, Amazon Beauty validation (chosen λ={best['lambda']})")
    fig.tight_layout()
    fig.savefig(RESULTS / "rerank_tradeoff.png", dpi=110)
    plt.close(fig)


def _markdown(out: dict) -> None:
    lines = [f"# MMR trade-off ({out['dataset']}, {out['split']}, {out['users']} users)", "",
             f"Pool: {out['pool']}; vectors: {out['vectors']}. Chosen λ = {out['chosen_lambda']} ({out['rule']}).", "",
             "| lambda | R@10 | N@10 | ILD (vectors) | ILD (categories) | category coverage | ms/user |",
             "|---|---|---|---|---|---|---|"]
    for r in out["rows"]:
        lines.append(f"| {r['lambda']} | {r['R@10']:.4f} | {r['N@10']:.4f} | {r['ild_vectors']:.4f} | "
                     f"{r['ild_categories']:.4f} | {r['category_coverage']:.4f} | {r['ms_per_user']:.2f} |")
    lines += ["", "![trade-off](rerank_tradeoff.png)", "", f"Command: `{out['command']}`"]
    (RESULTS / "rerank_tradeoff.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    t = time.perf_counter()
    code = main()
    print(f"{time.perf_counter() - t:.0f}s")
    sys.exit(code)
