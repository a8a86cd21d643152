"""python -m model quality-stream: the offline quality scorer refitted on a simulated project's labels, against
the shipped weights, on the next annotations (model/benchmarks/quality_stream.py)."""
from __future__ import annotations

import argparse
import functools
import json

from model.cli.benchmarks import at_least, open_checked, output_folder
from model.tools import make_segmenter


def add_commands(commands: argparse._SubParsersAction) -> None:
    from model.benchmarks.quality_stream import DOMAINS, MAX_CLICKS, REFIT_POINTS, WINDOW

    stream = commands.add_parser("quality-stream", help="the project scorer's refits on a simulated project stream, "
                                                        "against the shipped weights")
    stream.add_argument("--dataset", required=True, help="a manifest folder, a COCO JSON or a SegAgent JSON")
    stream.add_argument("--images", help="image folder for a JSON dataset")
    stream.add_argument("--domain", action="append", choices=tuple(DOMAINS),
                        help="the images' domain (repeat for several streams; default photo): "
                             + "; ".join(f"{name}: {what}" for name, what in DOMAINS.items()))
    stream.add_argument("--out", required=True, help="folder for summary.json and stream.csv")
    stream.add_argument("--seed", type=int, default=0, help="of the objects' order, the click counts and the noise")
    stream.add_argument("--per-object", type=int, default=2, choices=range(1, MAX_CLICKS + 1),
                        help="annotations per object (distinct click counts)")
    stream.add_argument("--refit-at", type=at_least(1), nargs="+", default=list(REFIT_POINTS),
                        help="labels at each refit")
    stream.add_argument("--window", type=at_least(1), default=WINDOW, help="annotations scored after each refit")
    stream.add_argument("--limit", type=at_least(1), help="only the first N objects")
    stream.add_argument("--workers", type=at_least(1), default=1, help="processes")
    stream.add_argument("--cache", help="a folder to keep the tool's masks and the features in between runs")
    stream.add_argument("--orders", type=at_least(1), default=1,
                        help="also measure the goal over this many orders of the same objects (the seeded one first)")
    stream.set_defaults(run=_quality_stream)


def _quality_stream(args: argparse.Namespace) -> int:
    from model.benchmarks.quality import DatasetError
    from model.benchmarks.quality_stream import StreamTooShort, run, write_report
    from model.quality.scorers import QualityModel

    out, cache = output_folder(args.out), output_folder(args.cache) if args.cache else None
    dataset = open_checked(args.dataset, args.images).limit(args.limit)
    needed = max(args.refit_at) + args.window
    if len(dataset) * args.per_object < needed:
        raise SystemExit(f"error: {len(dataset)} objects make at most {len(dataset) * args.per_object} annotations "
                         f"at {args.per_object} an object: too few for {max(args.refit_at)} labels and "
                         f"{args.window} scored after them")
    try:
        summary, streams = run(dataset, args.domain or ["photo"], functools.partial(make_segmenter, "classical"),
                               seed=args.seed, per_object=args.per_object, points=args.refit_at, window=args.window,
                               cache=cache, workers=args.workers, orders=args.orders)
    except (DatasetError, StreamTooShort) as exc:
        raise SystemExit(f"error: {exc}") from exc
    write_report(out, summary, streams, QualityModel.load())
    print(json.dumps(summary, indent=2))
    return 0
