"""COBRA ablation on Amazon Beauty, protocol B (ties shuffled with seed 1), VALIDATION only: which
ID the dense vector is conditioned on and how it is trained, against the unconditioned and the
sparse-only modes. Every variant is trained for the test stage with early stopping on validation
and its inference settings tuned on the full validation set (bench/cobra_beauty.py --no-test);
the test split is never scored here.

    python -m bench.cobra_ablation                 # train every variant (about 8-10 min each on 2 cores)
    python -m bench.cobra_ablation --only sampled  # one variant
    python -m bench.cobra_ablation --collect       # only the table, from the JSON files of earlier runs
    python -m bench.cobra_ablation --retune residual_l1_history   # a finished variant's model, other inference
    python -m bench.cobra_ablation --test uncond --key cobra_unconditioned   # one variant's saved channel,
                                                   # scored once on test, recorded as amazon-beauty-robust:KEY

Writes bench/results/cobra_ablation.md and .json.
"""
from __future__ import annotations

import argparse
import json
import sys

from bench import cobra_beauty
from bench.summary import RESULTS, quality_entry, record

SEED = 1
# name -> (mode, channel overrides, what it tests)
VARIANTS = {
    "uncond": ("cobra", ["dense_levels=0", "dense_condition=teacher"],
               "dense head reads the history state only (the previous shipped mode)"),
    "teacher": ("cobra", ["dense_levels=null", "dense_condition=teacher"],
                "conditioned on the whole ID, trained on the true ID (teacher forcing)"),
    "mixed": ("cobra", ["dense_levels=null", "dense_condition=mixed", "teacher_prob=0.5"],
              "conditioned on the whole ID, trained on the true ID half the time, else a drawn one"),
    "sampled": ("cobra", ["dense_levels=null", "dense_condition=sampled"],
                "conditioned on the whole ID, trained on IDs drawn from the model (trie-constrained)"),
    "sampled_l1": ("cobra", ["dense_levels=1", "dense_condition=sampled"],
                   "conditioned on the first ID level, trained on drawn IDs"),
    "sampled_drop4": ("cobra", ["dense_levels=null", "dense_condition=sampled", "dropout=0.4"],
                      "as sampled, dropout 0.4 (the two-tower's)"),
    "sampled_negs": ("cobra", ["dense_levels=null", "dense_condition=sampled", "negatives=sampled", "n_negatives=2048"],
                     "as sampled, the dense loss over in-batch + 2048 popularity-drawn negatives with logQ "
                     "(the two-tower's loss) instead of the full catalog"),
    "sampled_tied": ("cobra", ["dense_levels=null", "dense_condition=sampled", "tied_input=true"],
                     "as sampled, history items enter with their item vector itself (tied input/output space, "
                     "as SASRec and the two-tower)"),
    "sampled_tied_negs": ("cobra", ["dense_levels=null", "dense_condition=sampled", "tied_input=true",
                                    "negatives=sampled", "n_negatives=2048"],
                          "tied input and the two-tower's sampled loss together"),
    "uncond_tied": ("cobra", ["dense_levels=0", "dense_condition=teacher", "tied_input=true"],
                    "as sampled_tied (the shipped mode), the dense head unconditioned"),
    "sampled_tied_uncond": ("cobra", ["dense_levels=null", "dense_condition=sampled", "tied_input=true",
                                      "uncond_weight=1.0", "catalog_query=history"],
                            "as sampled_tied, plus the same dense loss on the ID-free vector, which searches the "
                            "catalog once per request (catalog_query history)"),
    "residual_l1": ("cobra", ["dense_levels=1", "dense_condition=teacher", "dense_cond=residual", "uncond_weight=1.0",
                              "tied_input=true"],
                    "as sampled_tied, but the dense head has its own zero-initialised code embeddings, conditioned on "
                    "the first ID level, trained on the true ID, plus the same loss on the unconditioned vector"),
    "residual_all": ("cobra", ["dense_levels=null", "dense_condition=teacher", "dense_cond=residual",
                               "uncond_weight=1.0", "tied_input=true"],
                     "as residual_l1, conditioned on the whole ID"),
    "uncond_drop4": ("cobra", ["dense_levels=0", "dense_condition=teacher", "dropout=0.4"],
                     "as uncond, dropout 0.4"),
}

# Inference-only variants: a finished variant's saved channel with other inference settings, the
# BeamFusion weights re-tuned on validation (no training).
RETUNED = {
    "residual_l1_history": ("residual_l1", ["catalog_query=history"],
                            "residual_l1's model; the catalog searched once per request by the ID-free vector, the "
                            "items inside each beam's ID ranked by that beam's level-1 conditioned vector"),
    "sampled_tied_history": ("sampled_tied", ["catalog_query=history"],
                             "sampled_tied's model, the catalog searched once per request by the ID-free vector"),
}

# Runs stopped before early stopping ended (machine time), what they had reached: 5,000-user
# validation sample of the training loop, so not comparable to the table's all-user figures except
# with the 'sample' column of the finished runs.
STOPPED = {
    "mixed": "stopped at epoch 4 of 40: sample R@10 .0726 / N@10 .0350 (uncond at epoch 4: .0986 / .0551)",
    "sampled_drop4": "stopped at epoch 4 of 40: sample R@10 .0838 / N@10 .0473 (sampled at epoch 4: .0910 / .0515)",
    "sampled_tied_negs": "stopped at epoch 3 of 40: sample R@10 .0892 / N@10 .0476 (sampled_tied at epoch 3: .0916 / .0517)",
    "uncond_drop4": "stopped at epoch 9 of 40, still rising: sample R@10 .0932 / N@10 .0512 (uncond best .0986 / .0551)",
}


def trained(name: str) -> str:
    """The variant whose training produced `name`'s model."""
    return RETUNED[name][0] if name in RETUNED else name


def result_file(name: str):
    return RESULTS / f"cobra_{VARIANTS[trained(name)][0]}_b_{name}_beauty.json"


def run_dir(name: str):
    base = trained(name)
    return cobra_beauty.ROOT / "runs" / f"cobra_{VARIANTS[base][0]}_b_{base}-beauty"


def _split():
    from pipeline.data import leave_one_out, load_dataset, shuffle_ties

    ds = shuffle_ties(load_dataset("amazon", cobra_beauty.DATA / cobra_beauty.DATASETS["amazon-beauty"]), SEED)
    return leave_one_out(ds.interactions)


def retune(name: str) -> None:
    """An inference-only variant: the base variant's saved channel, its settings, the fusion
    grid re-tuned on all validation users."""
    import yaml

    from channels.cobra.channel import CobraChannel
    from pipeline.evaluation.harness import build_eval_set

    base, sets, _ = RETUNED[name]
    channel = CobraChannel.load(run_dir(name))
    settings = {}
    for item in sets:
        key, _, value = item.partition("=")
        settings[key] = yaml.safe_load(value)
    channel.configure(**settings)
    log: list = []
    tuned = cobra_beauty.tune(channel, cobra_beauty.INFERENCE_GRID["cobra"], build_eval_set(_split(), "valid", 50), log)
    base_res = json.loads(result_file(base).read_text())
    result = {"mode": channel.mode, "command": f"python -m bench.cobra_ablation --retune {name}", "base": base,
              "settings": settings, "params": channel._params(), "fit_seconds": base_res["fit_seconds"],
              "fit_report": base_res["fit_report"], "tuning": log, "chosen": tuned["params"] | settings,
              "valid": {k: round(v, 4) for k, v in tuned["metrics"].items()}, "test": None,
              "protocol": f"B (ties shuffled, seed {SEED})"}
    result_file(name).write_text(json.dumps(result, indent=1, default=float))




def run(name: str) -> None:
    mode, sets, _ = VARIANTS[name]
    argv = ["--mode", mode, "--shuffle-ties", str(SEED), "--no-test", "--tag", f"_b_{name}"]
    for item in sets:
        argv += ["--set", item]
    cobra_beauty.main(argv)


def collect() -> tuple[str, dict]:
    rows = ["| variant | what | valid R@10 | valid N@10 | valid R@50 | sample R@10 / N@10 (best epoch) | fit s | "
            "chosen inference |", "|---|---|---|---|---|---|---|---|"]
    data = {}
    for name, what in [(n, v[2]) for n, v in VARIANTS.items()] + [(n, v[2]) for n, v in RETUNED.items()]:
        path = result_file(name)
        if not path.exists():
            rows.append(f"| {name} | {what} | {STOPPED.get(name, 'not run')} | | | | | |")
            continue
        res = json.loads(path.read_text())
        v, fit = res["valid"], res["fit_report"]
        data[name] = {"valid": v, "best_epoch": fit["best_epoch"], "fit_seconds": res["fit_seconds"],
                      "chosen": res["chosen"], "command": res["command"]}
        chosen = ", ".join(f"{k} {val}" for k, val in res["chosen"].items())
        best = fit["best"]
        rows.append(f"| {name} | {what} | {v['R@10']:.4f} | {v['N@10']:.4f} | {v['R@50']:.4f} | "
                    f"{best['valid_R@10']:.4f} / {best['valid_N@10']:.4f} ({fit['best_epoch']}) | "
                    f"{res['fit_seconds']:.0f} | {chosen} |")
    text = ("# COBRA ablation (Amazon Beauty, protocol B: ties shuffled, seed 1; validation, all users)\n\n"
            "Trained on the history before the validation targets, early stopping on 5,000 validation users, "
            "inference settings tuned on all validation users. The test split is not scored.\n\n"
            "`python -m bench.cobra_ablation`\n\n" + "\n".join(rows) + "\n")
    return text, data


def score_test(name: str, key: str) -> int:
    """The saved channel of a finished variant, with the inference settings it chose on
    validation, scored on the test split (all users) once."""
    from channels.cobra.channel import CobraChannel
    from pipeline.evaluation.harness import build_eval_set

    res = json.loads(result_file(name).read_text())
    channel = CobraChannel.load(run_dir(name))
    channel.configure(**res["chosen"])
    test_set = build_eval_set(_split(), "test", 50)
    test = cobra_beauty.evaluate(channel, test_set)
    command = f"python -m bench.cobra_ablation --test {name} --key {key}"
    print(f"{name} test: " + " ".join(f"{k} {test[k]:.4f}" for k in ("R@5", "N@5", "R@10", "N@10", "R@50")))
    record("amazon-beauty-robust", key, quality_entry(
        test, command, res["fit_seconds"], valid={k: res["valid"][k] for k in ("R@10", "N@10")}, users=len(test_set),
        params=res["chosen"], variant=name, seeds=[SEED]))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", choices=sorted(VARIANTS), help="run only these variants")
    ap.add_argument("--collect", action="store_true", help="do not train: the table from earlier runs")
    ap.add_argument("--retune", action="append", choices=sorted(RETUNED),
                    help="an inference-only variant of a finished variant's saved channel (no training)")
    ap.add_argument("--test", choices=sorted(VARIANTS | RETUNED), help="score this variant's saved channel on test once")
    ap.add_argument("--key", help="with --test: the summary key under amazon-beauty-robust")
    args = ap.parse_args(argv)
    if args.test:
        return score_test(args.test, args.key or f"cobra_{args.test}")
    if args.retune:
        for name in args.retune:
            retune(name)
    elif not args.collect:
        for name in args.only or list(VARIANTS):
            run(name)
    text, data = collect()
    (RESULTS / "cobra_ablation.md").write_text(text)
    (RESULTS / "cobra_ablation.json").write_text(json.dumps(data, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
