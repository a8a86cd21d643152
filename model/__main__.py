"""Command line: python -m model evaluate | serve-policy ..."""
from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import time
from pathlib import Path

from .datasets import open_dataset
from .evaluate import (benchmark_agent, benchmark_clicks, summarize_agent, summarize_clicks, write_agent_report,
                       write_click_report)
from .tools import TOOL_NAMES, make_segmenter


def _evaluate(args: argparse.Namespace) -> int:
    dataset = open_dataset(args.dataset, args.images).limit(args.limit)
    if args.policy:
        return _evaluate_agent(args, dataset)
    make = functools.partial(make_segmenter, args.tool, sam_checkpoint=args.sam_checkpoint,
                             data_dir=args.data_dir, sam_sha256=args.sam_sha256)
    started = time.perf_counter()
    runs = benchmark_clicks(make, dataset, args.max_clicks, workers=args.workers)
    summary = summarize_clicks(runs, dataset.name, args.tool, args.max_clicks, time.perf_counter() - started)
    summary["workers"] = args.workers
    write_click_report(Path(args.out), summary, runs)
    print(json.dumps({k: v for k, v in summary.items() if k != "miou_at_click"}, indent=2))
    return 0


def _evaluate_agent(args: argparse.Namespace, dataset) -> int:
    from .agent import Agent, AgentConfig
    from .policies import make_policy
    from .quality import PolicyScorer

    segmenter = make_segmenter(args.tool, sam_checkpoint=args.sam_checkpoint, data_dir=args.data_dir,
                               sam_sha256=args.sam_sha256)
    policy = make_policy(args.policy, adapter=args.policy_adapter, answer_format=args.policy_format)
    scorer = PolicyScorer(policy) if args.prm == "policy" else None
    agent = Agent(segmenter, policy, AgentConfig(max_steps=args.steps, samples=args.samples), scorer)
    rows, timing = benchmark_agent(agent, dataset, batch_size=args.batch_size)
    summary = summarize_agent(rows, timing, dataset.name, args.tool, policy.name)
    summary.update(steps_budget=args.steps, samples=args.samples, batch_size=args.batch_size, prm=args.prm)
    write_agent_report(Path(args.out), summary, rows)
    print(json.dumps(summary, indent=2))
    return 0


def _serve_policy(args: argparse.Namespace) -> int:
    from .policies.server import create_policy_app
    from .policies.transformers_vlm import TransformersPolicy

    policy = TransformersPolicy(args.policy, adapter=args.policy_adapter)
    app = create_policy_app(policy, args.model_id or Path(args.policy).name)
    from werkzeug.serving import run_simple

    run_simple(args.host, args.port, app, threaded=True)
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
    evaluate.add_argument("--policy", help="run agent episodes from the text prompts with this policy (a path, "
                                           "hub id or http(s) endpoint) instead of the simulated annotator")
    evaluate.add_argument("--policy-adapter", help="a LoRA adapter on top of --policy")
    evaluate.add_argument("--policy-format", default="segagent", choices=("segagent", "segagent-qwen"),
                          help="how a remote policy writes coordinates")
    evaluate.add_argument("--steps", type=int, default=5, help="agent steps per episode")
    evaluate.add_argument("--samples", type=int, default=1, help="candidates per step (above 1: PRM search)")
    evaluate.add_argument("--prm", choices=("tool", "policy"), default="tool",
                          help="what scores candidates: the tool's confidence or the policy asked for the IoU")
    evaluate.add_argument("--batch-size", type=int, default=1, help="episodes advanced together")
    evaluate.set_defaults(run=_evaluate)

    serve = commands.add_parser("serve-policy", help="an OpenAI-compatible server over a transformers VLM")
    serve.add_argument("--policy", required=True, help="local path or hub id")
    serve.add_argument("--policy-adapter", help="a LoRA adapter on top")
    serve.add_argument("--model-id", help="the model name the server reports (default: the folder name)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(run=_serve_policy)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
