"""The `hybridrec` command line."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from pipeline.config import ConfigError, apply_overrides, load_config
from pipeline.resources import DEFAULT_CONFIG, SERVING_CONFIG, package_version


def _overrides(pairs: Sequence[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--set takes key=value, got '{pair}'")
        out[key] = yaml.safe_load(value)
    return out


def _config(args: argparse.Namespace):
    return load_config(args.config, _overrides(args.set))


def cmd_data(args: argparse.Namespace) -> int:
    from pipeline.data import load_dataset, synthesize

    if args.data_cmd == "synthesize":
        ds = synthesize(n_users=args.n_users, n_items=args.n_items, seed=args.seed)
    elif args.data_cmd == "fetch":
        if not args.from_dir:
            raise ConfigError("this machine has no route to the dataset hosts; pass --from DIR with a local copy")
        ds = load_dataset(args.source, args.from_dir)
    else:
        from pipeline.workflow import prepare_data

        ds = prepare_data(_config(args).data)
    ds.save(Path(args.out))
    print(f"wrote {ds.name}: {ds.n_users} users, {ds.n_items} items, {len(ds.interactions)} interactions -> {args.out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pipeline.workflow import train

    path = train(_config(args), stage=args.stage, run_dir=Path(args.out) if args.out else None)
    print(f"run folder: {path}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pipeline.evaluation.report import evaluate_run, format_table
    from pipeline.workflow import load_run, train

    overrides = _overrides(args.set)
    if args.run and overrides:
        fixed = sorted(k for k in overrides if not k.startswith("eval."))
        if fixed:
            raise ConfigError(f"--set with --run can change eval.* keys only (the run is trained already), got "
                              f"{fixed}; train a new run with --config instead")
    run_path = Path(args.run) if args.run else train(_config(args), stage=args.stage)
    run = load_run(run_path)
    if args.run and overrides:
        run.config = apply_overrides(run.config, overrides, f"{run_path}/manifest.json")
    out = Path(args.out) if args.out else run_path / f"eval-{run.stage}"
    report = evaluate_run(run, max_users=args.max_users, out_dir=out, with_cascade=not args.no_cascade)
    print(format_table(report))
    print(f"report: {out / 'report.json'}")
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    from pipeline.batch import recommend, write

    if Path(args.out).exists() and not args.overwrite:
        raise ConfigError(f"--out {args.out} exists; pass --overwrite to replace it")
    frame, meta = recommend(args.run, args.users, args.k, now=args.now, batch_size=args.batch_size, use_ray=args.ray,
                            ray_actors=args.actors)
    write(frame, meta, args.out)
    print(f"wrote {meta['rows']} rows for {meta['users']} users ({meta['unknown_users']} unknown) in {meta['seconds']:.1f} s "
          f"({meta['users_per_s']:.0f} users/s, {meta['engine']}) -> {args.out}")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from pipeline.quickstart import quickstart

    return quickstart(args.config, _overrides(args.set))


def cmd_serve(args: argparse.Namespace) -> int:
    from pipeline.serving.config import load_serve_config

    cfg = load_serve_config(args.config, _overrides(args.set))
    from pipeline.serving import app  # imports ray

    if args.update:
        app.update(args.run, cfg)
        print(f"rolled the running app '{cfg.ray.app_name}' over to {args.run}")
        return 0
    app.serve_forever(args.run, cfg, log_to_driver=args.verbose)
    return 0


def cmd_ab(args: argparse.Namespace) -> int:
    import json

    if args.ab_cmd == "replay":
        from pipeline.serving.replay import replay

        summary = replay(args.url, args.run, n_users=args.users, k=args.k, seed=args.seed, rate=args.rate)
        print(json.dumps(summary.to_dict(), indent=2))
        return 0 if summary.errors == 0 else 1
    from pipeline.serving.abreport import format_report, load_feedback, load_served, report

    if not Path(args.logs).is_dir():
        raise ConfigError(f"{args.logs}: no such log folder")
    try:
        rep = report(load_served(args.logs), load_feedback(args.logs, args.feedback), control=args.control,
                     n_boot=args.n_boot, include_forced=args.include_forced)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    print(format_report(rep))
    if args.out:
        Path(args.out).write_text(json.dumps(rep, indent=2) + "\n")
        print(f"report: {args.out}")
    return 0


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default."""


def _parser(sub: Any, name: str, help: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help, formatter_class=_Help)


def _with_set(sp: argparse.ArgumentParser, what: str = "config") -> None:
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help=f"override a {what} key (dotted; list items by index or name, e.g. "
                         "channels.item2item.quota=300); repeatable")


def _serve_parsers(sub: Any) -> None:
    sv = _parser(sub, "serve", "serve a run folder over HTTP with Ray Serve (127.0.0.1 by default)")
    sv.add_argument("--run", required=True, help="a run folder from `hybridrec train`")
    sv.add_argument("--config", default=str(SERVING_CONFIG) if SERVING_CONFIG.is_file() else None,
                    help="serving config YAML")
    _with_set(sv, "serving config")
    sv.add_argument("--update", action="store_true", help="roll the running app over to --run (no failed requests)")
    sv.set_defaults(fn=cmd_serve)

    ab = _parser(sub, "ab", "online A/B: report per-arm metrics, replay held-out clicks")
    asub = ab.add_subparsers(dest="ab_cmd", required=True)
    r = _parser(asub, "report", "per-arm CTR, clicks/list, MRR with bootstrap intervals")
    r.add_argument("--logs", required=True, help="the serving log folder (serve writes <run>/serve_logs)")
    r.add_argument("--feedback", action="append", default=[], help="imported feedback (JSONL/CSV/Parquet), repeatable")
    r.add_argument("--control", default=None, help="the arm the others are compared with (default: the first)")
    r.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples")
    r.add_argument("--include-forced", action="store_true", help="count requests that forced an arm")
    r.add_argument("--out", default=None, help="write the report as JSON to this file")
    rp = _parser(asub, "replay", "send held-out targets of a run as requests and clicks to a running app")
    rp.add_argument("--run", required=True, help="the run folder the app serves")
    rp.add_argument("--url", default="http://127.0.0.1:8000", help="the app's base URL")
    rp.add_argument("--users", type=int, default=500, help="how many users to replay")
    rp.add_argument("--k", type=int, default=10, help="list length asked for")
    rp.add_argument("--seed", type=int, default=0, help="seed of the user sample")
    rp.add_argument("--rate", type=float, default=None, help="requests per second (None: as fast as answered)")
    ab.set_defaults(fn=cmd_ab)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hybridrec", description="Hybrid cascade recommender", formatter_class=_Help)
    p.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level")
    p.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = p.add_subparsers(dest="cmd", required=True)

    def with_config(sp: argparse.ArgumentParser, required: bool = True) -> None:
        sp.add_argument("--config", required=required, default=None if required else str(DEFAULT_CONFIG),
                        help="pipeline config YAML")
        _with_set(sp)

    d = _parser(sub, "data", "prepare, synthesize or fetch datasets")
    dsub = d.add_subparsers(dest="data_cmd", required=True)
    s = _parser(dsub, "synthesize", "write the seeded synthetic dataset")
    s.add_argument("--out", required=True, help="output folder (canonical Parquet tables)")
    s.add_argument("--n-users", type=int, default=2000, help="number of users")
    s.add_argument("--n-items", type=int, default=1000, help="number of items")
    s.add_argument("--seed", type=int, default=0, help="random seed (same seed, same tables)")
    pr = _parser(dsub, "prepare", "load the config's data source into canonical Parquet tables")
    with_config(pr)
    pr.add_argument("--out", required=True, help="output folder")
    f = _parser(dsub, "fetch", "import a public dataset from a local copy (--from)")
    f.add_argument("source", choices=["amazon", "movielens"], help="dataset family")
    f.add_argument("--from", dest="from_dir", default=None, help="folder holding the original files")
    f.add_argument("--out", required=True, help="output folder")
    d.set_defaults(fn=cmd_data)

    t = _parser(sub, "train", "fit every stage of a config into a run folder")
    with_config(t)
    t.add_argument("--stage", choices=["valid", "test"], default=None, help="fit for this evaluation stage (None: eval.stage)")
    t.add_argument("--out", default=None, help="run folder (None: <run.root>/<run.name>-<time>)")
    t.set_defaults(fn=cmd_train)

    e = _parser(sub, "evaluate", "evaluate channels and the cascade (trains first with --config)")
    g = e.add_mutually_exclusive_group(required=True)
    g.add_argument("--run", default=None, help="a run folder from `hybridrec train` (--set may change eval.* keys)")
    g.add_argument("--config", default=None, help="pipeline config YAML (trains a run first)")
    _with_set(e)
    e.add_argument("--stage", choices=["valid", "test"], default=None, help="stage to train for with --config (None: eval.stage)")
    e.add_argument("--max-users", type=int, default=None, help="evaluate a seeded sample of users (None: all)")
    e.add_argument("--no-cascade", action="store_true", help="channels only")
    e.add_argument("--out", default=None, help="report folder (None: <run>/eval-<stage>)")
    e.set_defaults(fn=cmd_evaluate)

    b = _parser(sub, "recommend", "batch inference: every user's list through the run's cascade, to Parquet")
    b.add_argument("--run", required=True, help="a run folder from `hybridrec train`")
    b.add_argument("--users", default="all", help="'all', or a file of user ids (Parquet/CSV with user_id, or one per line)")
    b.add_argument("--k", type=int, default=10, help="list length per user")
    b.add_argument("--out", required=True, help="output Parquet file (user_id, rank, item_id, score, reasons)")
    b.add_argument("--now", type=int, default=None, help="request time for every user, unix seconds (None: the clock)")
    b.add_argument("--batch-size", type=int, default=512, help="users per cascade call")
    b.add_argument("--ray", action="store_true", help="run the batches on Ray Data actors (same rows)")
    b.add_argument("--actors", type=int, default=2, help="Ray Data actors with --ray (one CPU each)")
    b.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    b.set_defaults(fn=cmd_recommend)

    q = _parser(sub, "quickstart", "the main job on the synthetic default: train, compare, serve one request")
    with_config(q, required=False)
    q.set_defaults(fn=cmd_quickstart)
    _serve_parsers(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from pipeline.data import DataValidationError

    try:
        return int(args.fn(args) or 0)
    except (ConfigError, DataValidationError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
