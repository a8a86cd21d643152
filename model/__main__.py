"""Command line: python -m model evaluate ..."""
from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import time
from pathlib import Path

from .datasets import open_dataset
from .evaluate import benchmark_clicks, summarize_clicks, write_click_report
from .tools import TOOL_NAMES, make_segmenter


def _evaluate(args: argparse.Namespace) -> int:
    dataset = open_dataset(args.dataset, args.images).limit(args.limit)
    make = functools.partial(make_segmenter, args.tool, sam_checkpoint=args.sam_checkpoint,
                             data_dir=args.data_dir, sam_sha256=args.sam_sha256)
    started = time.perf_counter()
    runs = benchmark_clicks(make, dataset, args.max_clicks, workers=args.workers)
    summary = summarize_clicks(runs, dataset.name, args.tool, args.max_clicks, time.perf_counter() - started)
    summary["workers"] = args.workers
    write_click_report(Path(args.out), summary, runs)
    print(json.dumps({k: v for k, v in summary.items() if k != "miou_at_click"}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    evaluate = commands.add_parser("evaluate", help="clicks-to-IoU benchmark of an interactive tool")
    evaluate.add_argument("--dataset", required=True,
                          help="a manifest folder, a COCO annotation JSON or a SegAgent dataset JSON")
    evaluate.add_argument("--images", help="image folder for a JSON dataset (default: beside the JSON)")
    evaluate.add_argument("--tool", choices=TOOL_NAMES, default="classical")
    evaluate.add_argument("--max-clicks", type=int, default=20)
    evaluate.add_argument("--limit", type=int, help="only the first N samples")
    evaluate.add_argument("--sam-checkpoint", help="SAM checkpoint path or URL (for --tool sam)")
    evaluate.add_argument("--sam-sha256", help="expected SHA-256 of a SAM checkpoint URL")
    evaluate.add_argument("--data-dir", default="data", help="where downloaded checkpoints are kept")
    evaluate.add_argument("--workers", type=int, default=1,
                          help="processes; keep 1 when the time per click is what you measure")
    evaluate.add_argument("--out", required=True, help="folder for summary.json, per_image.csv and the plot")
    evaluate.set_defaults(run=_evaluate)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
