"""python -m model evaluate | score | fit-scorer: the interactive tools, the agent and the quality scorer
measured on datasets."""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

from model.core.datasets import Dataset, open_dataset
from model.settings import Settings
from model.tools import TOOL_NAMES, make_segmenter

FEW_OBJECTS = 50  # a fold's scorer learning from fewer is far below what the shipped one learned from


def at_least(low: int):
    """An argparse type: an integer of at least `low`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"at least {low}, not {value}")
        return value
    return parse


def output_folder(path: str) -> Path:
    """A folder to write into, checked before a long run rather than after it."""
    if Path(path).exists() and not Path(path).is_dir():
        raise SystemExit(f"error: {path} exists and is not a folder")
    return Path(path)


def open_checked(path: str, images: str | None = None) -> Dataset:
    """open_dataset, its errors as a message and an exit status instead of a traceback."""
    try:
        return open_dataset(path, images)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from exc


def add_commands(commands: argparse._SubParsersAction, settings: Settings) -> None:
    _add_evaluate(commands, settings)
    _add_score(commands)
    _add_fit_scorer(commands)


def _add_evaluate(commands: argparse._SubParsersAction, settings: Settings) -> None:
    evaluate = commands.add_parser("evaluate", help="clicks-to-IoU benchmark of an interactive tool")
    evaluate.add_argument("--dataset", required=True,
                          help="a manifest folder, a COCO annotation JSON or a SegAgent dataset JSON")
    evaluate.add_argument("--images", help="image folder for a JSON dataset (default: beside the JSON)")
    evaluate.add_argument("--tool", choices=TOOL_NAMES, default=settings.tool)
    evaluate.add_argument("--max-clicks", type=int, default=20)
    evaluate.add_argument("--limit", type=at_least(1), help="only the first N samples")
    evaluate.add_argument("--sam-checkpoint", default=settings.sam_checkpoint or None,
                          help="SAM checkpoint path or URL (for --tool sam)")
    evaluate.add_argument("--sam-sha256", default=settings.sam_sha256 or None,
                          help="expected SHA-256 of a SAM checkpoint URL")
    evaluate.add_argument("--sam2-checkpoint", default=settings.sam2_checkpoint or None,
                          help="SAM 2 checkpoint path or URL (for --tool sam2)")
    evaluate.add_argument("--sam2-sha256", default=settings.sam2_sha256 or None,
                          help="expected SHA-256 of a SAM 2 checkpoint URL")
    evaluate.add_argument("--sam2-config", default=settings.sam2_config or None,
                          help="SAM 2 model config: configs/sam2.1/sam2.1_hiera_t.yaml (_s, _b+, _l) or a YAML file "
                               "(default: the one of Meta's checkpoint file name)")
    evaluate.add_argument("--sam3-checkpoint", default=settings.sam3_checkpoint or None,
                          help="SAM 3 weights: a folder written by save_pretrained, or a hub name (for --tool sam3)")
    evaluate.add_argument("--sam3-revision", default=settings.sam3_revision or None,
                          help="the hub commit of --sam3-checkpoint (needed for a hub name); the token is HF_TOKEN")
    evaluate.add_argument("--device", choices=("auto", "cuda", "cpu"), default=settings.device,
                          help="where the SAM tools and an in-process policy run")
    evaluate.add_argument("--data-dir", default=settings.data_dir, help="where downloaded checkpoints are kept")
    evaluate.add_argument("--workers", type=int, default=1,
                          help="processes; keep 1 when the time per click is what you measure")
    evaluate.add_argument("--out", required=True, help="folder for summary.json, per_image.csv and the plot")
    # no default from SEGAGENT_POLICY: giving a policy turns the click benchmark into agent episodes
    evaluate.add_argument("--policy", help="run agent episodes from the text prompts with this policy (a path, "
                                           "hub id or http(s) endpoint) instead of the simulated annotator")
    evaluate.add_argument("--policy-adapter", help="a LoRA adapter on top of --policy")
    evaluate.add_argument("--policy-format", default=settings.policy_format, choices=("segagent", "segagent-qwen"),
                          help="how a remote policy writes coordinates")
    evaluate.add_argument("--steps", type=int, default=settings.agent_steps, help="agent steps per episode")
    evaluate.add_argument("--samples", type=int, default=settings.agent_samples,
                          help="candidates per step (above 1: PRM search)")
    evaluate.add_argument("--prm", choices=("tool", "policy"), default=settings.prm,
                          help="what scores candidates: the tool's confidence or the policy asked for the IoU")
    evaluate.add_argument("--batch-size", type=int, default=1, help="episodes advanced together")
    evaluate.set_defaults(run=_evaluate)


def _add_score(commands: argparse._SubParsersAction) -> None:
    score = commands.add_parser("score", help="quality-scorer benchmark: estimated against true IoU")
    score.add_argument("--dataset", required=True)
    score.add_argument("--images", help="image folder for a JSON dataset")
    score.add_argument("--out", required=True)
    score.add_argument("--seed", type=int, default=0, help="seed of the corruption protocol")
    score.add_argument("--limit", type=at_least(1), help="only the first N objects")
    score.add_argument("--workers", type=at_least(1), default=os.cpu_count() or 1,
                       help="processes (default: one per core)")
    score.add_argument("--candidates", action="store_true",
                       help="score each manifest entry's 'candidate' mask against its 'mask' instead")
    score.add_argument("--weights", help="score with these fixed weights (default: the shipped ones)")
    score.add_argument("--no-cross-validate", dest="cross_validate", action="store_false",
                       help="score with the shipped weights even on data they were trained on")
    score.add_argument("--folds", type=at_least(2), default=5)
    score.add_argument("--train-extra", action="append", help="another dataset to train every fold on too")
    score.add_argument("--policy", help="score --candidates with this policy as the scorer")
    score.add_argument("--policy-adapter")
    score.set_defaults(run=_score)


def _add_fit_scorer(commands: argparse._SubParsersAction) -> None:
    fit = commands.add_parser("fit-scorer", help="train the offline scorer's weights on corrupted masks")
    fit.add_argument("--dataset", action="append", required=True)
    fit.add_argument("--out", default=str(Path(__file__).parent.parent / "quality" / "weights.json"),
                     help="where the weights go (default: the shipped weights, model/quality/weights.json)")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--workers", type=at_least(1), default=os.cpu_count() or 1)
    fit.set_defaults(run=_fit_scorer)


def _evaluate(args: argparse.Namespace) -> int:
    from model.benchmarks.clicks import (
        benchmark_clicks,
        summarize_clicks,
        write_click_report,
    )

    dataset = open_dataset(args.dataset, args.images).limit(args.limit)
    if args.policy:
        return _evaluate_agent(args, dataset)
    make = functools.partial(make_segmenter, args.tool, **_tool_options(args))
    started = time.perf_counter()
    runs = benchmark_clicks(make, dataset, args.max_clicks, workers=args.workers)
    summary = summarize_clicks(runs, dataset.name, args.tool, args.max_clicks, time.perf_counter() - started)
    summary["workers"] = args.workers
    write_click_report(Path(args.out), summary, runs)
    print(json.dumps({k: v for k, v in summary.items() if k != "miou_at_click"}, indent=2))
    return 0


def _tool_options(args: argparse.Namespace) -> dict:
    """make_tool's keywords from evaluate's flags."""
    return {"sam_checkpoint": args.sam_checkpoint, "sam_sha256": args.sam_sha256, "data_dir": args.data_dir,
            "sam2_checkpoint": args.sam2_checkpoint, "sam2_sha256": args.sam2_sha256,
            "sam2_config": args.sam2_config, "device": args.device, "sam3_checkpoint": args.sam3_checkpoint,
            "sam3_revision": args.sam3_revision, "hf_token": Settings().hf_token or None}


def _evaluate_agent(args: argparse.Namespace, dataset: Dataset) -> int:
    from model.agent.loop import Agent, AgentConfig
    from model.benchmarks.agent import (
        benchmark_agent,
        summarize_agent,
        write_agent_report,
    )
    from model.policies import make_policy
    from model.quality.scorers import PolicyScorer

    segmenter = make_segmenter(args.tool, **_tool_options(args))
    policy = make_policy(args.policy, adapter=args.policy_adapter, answer_format=args.policy_format,
                         device=args.device)
    scorer = PolicyScorer(policy, observation=args.policy_format) if args.prm == "policy" else None
    config = AgentConfig(max_steps=args.steps, samples=args.samples, observation_format=args.policy_format)
    agent = Agent(segmenter, policy, config, scorer)
    rows, timing = benchmark_agent(agent, dataset, batch_size=args.batch_size)
    summary = summarize_agent(rows, timing, dataset.name, args.tool, policy.name)
    summary.update(steps_budget=args.steps, samples=args.samples, batch_size=args.batch_size, prm=args.prm)
    write_agent_report(Path(args.out), summary, rows)
    print(json.dumps(summary, indent=2))
    return 0


def _score(args: argparse.Namespace) -> int:
    import model.benchmarks.quality as scoring

    if args.policy and not args.candidates:
        raise SystemExit("--policy scores --candidates; the corruption protocol measures the offline scorer")
    out = output_folder(args.out)
    same = [extra for extra in args.train_extra or [] if Path(extra).resolve() == Path(args.dataset).resolve()]
    if same:
        raise SystemExit(f"error: --train-extra {same[0]} is the dataset itself: every object would be trained on")
    name = f"policy {args.policy}" if args.policy else "offline"
    try:
        if args.candidates:
            labels, estimates, truth = scoring.candidate_rows(Path(args.dataset), _fixed_scorer(args))
            summary = {"dataset": args.dataset, "scorer": name, "protocol": "candidates",
                       **scoring.metrics(estimates, truth)}
        else:
            summary, estimates, truth, labels = _score_corruptions(args, name)
    except scoring.DatasetError as exc:
        raise SystemExit(f"error: {exc}") from exc
    scoring.write_score_report(out, summary, estimates, truth, labels)
    print(json.dumps(summary, indent=2))
    return 0


def _fixed_scorer(args: argparse.Namespace):
    from model.quality.scorers import OfflineScorer, PolicyScorer, QualityModel

    if args.policy:
        from model.policies import make_policy

        return PolicyScorer(make_policy(args.policy, adapter=args.policy_adapter))
    return OfflineScorer(QualityModel.load(args.weights) if args.weights else None)


def _score_corruptions(args: argparse.Namespace, name: str) -> tuple:
    """The corruption protocol: (summary, estimates, true IoUs, labels)."""
    import numpy as np

    import model.benchmarks.quality as scoring

    dataset = open_checked(args.dataset, args.images).limit(args.limit)
    rows = scoring.corrupted_features(dataset, seed=args.seed, workers=args.workers)
    if args.weights or not args.cross_validate:
        estimates, protocol = scoring.with_scorer(rows, _fixed_scorer(args)), "corruptions, fixed weights"
    else:
        extra = []
        for folder in args.train_extra or []:
            extra += [r for r in scoring.corrupted_features(open_checked(folder), seed=args.seed,
                                                            workers=args.workers) if r.features is not None]
        objects = len({r.sample for r in rows})
        learned_from = objects * (args.folds - 1) // args.folds
        if learned_from < FEW_OBJECTS:
            print(f"warning: {objects} objects in {args.folds} folds: each fold's scorer learns from about "
                  f"{learned_from} (the shipped one from 290), so these figures say little of the scorer; "
                  "--no-cross-validate measures the shipped weights", file=sys.stderr)
        estimates = scoring.cross_validated(rows, args.folds, extra, seed=args.seed)
        protocol = f"corruptions, {args.folds}-fold cross-validation by object (an image's objects in one fold)" + (
            f", trained with {', '.join(args.train_extra)} too" if args.train_extra else "")
    truth = np.array([r.iou for r in rows])
    labels = [f"{r.sample}:{r.kind}" for r in rows]
    summary = {"dataset": dataset.name, "scorer": name, "protocol": protocol, "seed": args.seed,
               **scoring.metrics(estimates, truth), "per_kind": scoring.per_kind(rows, estimates)}
    return summary, estimates, truth, labels


def _fit_scorer(args: argparse.Namespace) -> int:
    import model.benchmarks.quality as scoring
    from model.quality.scorers import train_quality_model

    if Path(args.out).is_dir():
        raise SystemExit(f"error: --out {args.out} is a folder; it names the weights file to write")
    rows = []
    for folder in args.dataset:
        try:
            found = scoring.corrupted_features(open_checked(folder), seed=args.seed, workers=args.workers)
        except scoring.DatasetError as exc:
            raise SystemExit(f"error: {exc}") from exc
        rows += [r for r in found if r.features is not None]
    features, ious = scoring.feature_matrix(rows)
    model = train_quality_model(features, ious, seed=args.seed,
                                trained_on={"datasets": [Path(d).name for d in args.dataset], "seed": args.seed,
                                            "masks": len(rows)})
    model.save(Path(args.out))
    print(f"{len(rows)} corrupted masks -> {args.out}")
    return 0
