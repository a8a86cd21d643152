"""Command line: python -m model evaluate | score | fit-scorer | export | simulate | train | versions | rollback |
serve-policy"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from model.core.datasets import open_dataset
from model.benchmarks.agent import benchmark_agent, summarize_agent, write_agent_report
from model.benchmarks.clicks import benchmark_clicks, summarize_clicks, write_click_report
from model.tools import TOOL_NAMES, make_segmenter


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
    from model.agent.loop import Agent, AgentConfig
    from model.policies import make_policy
    from model.quality.scorers import PolicyScorer

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


def _score(args: argparse.Namespace) -> int:
    import model.benchmarks.quality as scoring
    from model.quality.scorers import OfflineScorer, PolicyScorer, QualityModel

    out = Path(args.out)

    def fixed_scorer():
        if args.policy:
            from model.policies import make_policy

            return PolicyScorer(make_policy(args.policy, adapter=args.policy_adapter))
        return OfflineScorer(QualityModel.load(args.weights) if args.weights else None)

    name = f"policy {args.policy}" if args.policy else "offline"
    if args.policy and not args.candidates:
        raise SystemExit("--policy scores --candidates; the corruption protocol measures the offline scorer")
    if args.candidates:
        scorer = fixed_scorer()
        labels, estimates, truth = scoring.candidate_rows(Path(args.dataset), scorer)
        summary = {"dataset": args.dataset, "scorer": name, "protocol": "candidates",
                   **scoring.metrics(estimates, truth)}
    else:
        dataset = open_dataset(args.dataset, args.images).limit(args.limit)
        rows = scoring.corrupted_features(dataset, seed=args.seed, workers=args.workers)
        if args.weights or not args.cross_validate:
            estimates, protocol = scoring.with_scorer(rows, fixed_scorer()), "corruptions, fixed weights"
        else:
            extra = []
            for folder in args.train_extra or []:
                extra += [r for r in scoring.corrupted_features(open_dataset(folder), seed=args.seed,
                                                                workers=args.workers) if r.features is not None]
            estimates = scoring.cross_validated(rows, args.folds, extra, seed=args.seed)
            protocol = f"corruptions, {args.folds}-fold cross-validation by object" + (
                f", trained with {', '.join(args.train_extra)} too" if args.train_extra else "")
        truth = np.array([r.iou for r in rows])
        labels = [f"{r.sample}:{r.kind}" for r in rows]
        summary = {"dataset": dataset.name, "scorer": name, "protocol": protocol, "seed": args.seed,
                   **scoring.metrics(estimates, truth), "per_kind": scoring.per_kind(rows, estimates)}
    scoring.write_score_report(out, summary, estimates, truth, labels)
    print(json.dumps(summary, indent=2))
    return 0


def _fit_scorer(args: argparse.Namespace) -> int:
    import model.benchmarks.quality as scoring
    from model.quality.scorers import train_quality_model

    rows = []
    for folder in args.dataset:
        rows += [r for r in scoring.corrupted_features(open_dataset(folder), seed=args.seed, workers=args.workers)
                 if r.features is not None]
    features, ious = scoring._matrix(rows)
    model = train_quality_model(features, ious, seed=args.seed,
                                trained_on={"datasets": [Path(d).name for d in args.dataset], "seed": args.seed,
                                            "masks": len(rows)})
    model.save(Path(args.out))
    print(f"{len(rows)} corrupted masks -> {args.out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from model.flywheel.export import export_sharegpt
    from model.flywheel.trajectories import TrajectoryStore

    store_dir = Path(args.data_dir) / "trajectories"
    if not (store_dir / "trajectories.sqlite3").exists():
        raise SystemExit(f"no trajectory store under {store_dir}")
    count = export_sharegpt(TrajectoryStore(store_dir), args.out, project=args.project, color=args.color)
    print(f"{count} supervised turns -> {args.out}")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from model.flywheel.registry import scope_for
    from model.flywheel.trajectories import TrajectoryStore
    from model.flywheel.sources import simulated

    project = args.project
    scope_for(project)  # a project id, as Label Studio numbers them
    store = TrajectoryStore(Path(args.data_dir) / "trajectories")
    segmenter = make_segmenter(args.tool, sam_checkpoint=args.sam_checkpoint, data_dir=args.data_dir)
    dataset = open_dataset(args.dataset, args.images).limit(args.limit)
    steps = 0
    for index, sample in enumerate(dataset, start=1):
        description = sample.prompt or args.label
        record = simulated(segmenter, sample.image, sample.target, "scratch", args.label, description,
                           store.put_image(sample.image))
        # negative annotation ids: never one of Label Studio's, so its deletes leave these alone
        store.replace_annotation(project, index, -index, sample.name, [record])
        steps += len(record.steps)
    print(f"{len(dataset)} scratch trajectories ({steps} steps) of {dataset.name} -> project {project} in "
          f"{store.root}")
    return 0


def _scope(args: argparse.Namespace) -> str:
    from model.flywheel.registry import scope_for

    if not args.shared and not args.project:
        raise SystemExit("give --project ID (a Label Studio project) or --shared")
    return scope_for(args.project or "", shared=args.shared)


def _train(args: argparse.Namespace) -> int:
    from model.flywheel.gate import GateConfig
    from model.flywheel.job import JobSpec, run_job
    from model.flywheel.finetune import TrainConfig

    if not args.base:
        raise SystemExit("give --base (or set SEGAGENT_POLICY): the policy the adapters are trained for")
    spec = JobSpec(
        data_dir=args.data_dir, scope=_scope(args), base=args.base, base_adapter=args.base_adapter or None,
        tool=args.tool, sam_checkpoint=args.sam_checkpoint,
        train=TrainConfig(epochs=args.epochs, learning_rate=args.learning_rate, lora_rank=args.lora_rank,
                          lora_alpha=2 * args.lora_rank, accumulation=args.accumulation, max_turns=args.max_turns,
                          held_out=args.held_out, seed=args.seed),
        gate=GateConfig(max_turns=args.gate_turns, episodes=args.gate_episodes, steps=args.gate_steps,
                        tolerance=args.tolerance))
    result = run_job(spec)
    print(json.dumps(result, indent=2))
    return 0 if result["state"] in ("promoted", "rejected", "skipped") else 1


def _versions(args: argparse.Namespace) -> int:
    from model.flywheel.registry import Registry

    registry, scope = Registry(Path(args.data_dir) / "models"), _scope(args)
    active = registry.active(scope)
    print(f"{scope}: active {active}")
    for meta in registry.versions(scope):
        gate = meta.get("gate", {}).get("candidate", {})
        print(f"{'*' if meta['name'] == active else ' '} {meta['name']:>5}  {meta['status']:<9} parent "
              f"{meta.get('parent')}  {time.strftime('%Y-%m-%d %H:%M', time.localtime(meta['created']))}  "
              f"episode mIoU {gate.get('episode_miou', float('nan')):.3f}  next-action accuracy "
              f"{gate.get('action_accuracy', float('nan')):.3f}  trained on {meta['data']['train_steps']} steps")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from model.flywheel.registry import Registry

    registry, scope = Registry(Path(args.data_dir) / "models"), _scope(args)
    version = registry.rollback(scope, args.to)
    print(f"{scope}: {version} is active")
    return 0


def _serve_policy(args: argparse.Namespace) -> int:
    from model.policies.server import create_policy_app
    from model.policies.transformers_vlm import TransformersPolicy

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

    score = commands.add_parser("score", help="quality-scorer benchmark: estimated against true IoU")
    score.add_argument("--dataset", required=True)
    score.add_argument("--images", help="image folder for a JSON dataset")
    score.add_argument("--out", required=True)
    score.add_argument("--seed", type=int, default=0, help="seed of the corruption protocol")
    score.add_argument("--limit", type=int)
    score.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: one per core)")
    score.add_argument("--candidates", action="store_true",
                       help="score each manifest entry's 'candidate' mask against its 'mask' instead")
    score.add_argument("--weights", help="score with these fixed weights (default: the shipped ones)")
    score.add_argument("--no-cross-validate", dest="cross_validate", action="store_false",
                       help="score with the shipped weights even on data they were trained on")
    score.add_argument("--folds", type=int, default=5)
    score.add_argument("--train-extra", action="append", help="another dataset to train every fold on too")
    score.add_argument("--policy", help="score --candidates with this policy as the scorer")
    score.add_argument("--policy-adapter")
    score.set_defaults(run=_score)

    fit = commands.add_parser("fit-scorer", help="train the offline scorer's weights on corrupted masks")
    fit.add_argument("--dataset", action="append", required=True)
    fit.add_argument("--out", default=str(Path(__file__).parent / "quality" / "weights.json"))
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    fit.set_defaults(run=_fit_scorer)

    export = commands.add_parser("export", help="trajectories as supervised turns (ShareGPT, LLaMA-Factory)")
    export.add_argument("--data-dir", default=os.environ.get("SEGAGENT_DATA_DIR") or "data",
                        help="the backend's data folder (SEGAGENT_DATA_DIR)")
    export.add_argument("--out", required=True)
    export.add_argument("--format", choices=("sharegpt",), default="sharegpt")
    export.add_argument("--project", help="only this Label Studio project's trajectories")
    export.add_argument("--color", default="green", help="overlay colour of the observations")
    export.set_defaults(run=_export)

    simulate = commands.add_parser("simulate", help="the simulated annotator's trajectories toward a dataset's "
                                                    "masks, into a project's training data (a head start)")
    simulate.add_argument("--dataset", required=True)
    simulate.add_argument("--images", help="image folder for a JSON dataset")
    simulate.add_argument("--data-dir", default=os.environ.get("SEGAGENT_DATA_DIR") or "data")
    simulate.add_argument("--project", required=True, help="the Label Studio project id they belong to")
    simulate.add_argument("--label", default="Object", help="the label (and the description when a sample has none)")
    simulate.add_argument("--tool", choices=TOOL_NAMES, default=os.environ.get("SEGAGENT_TOOL") or "classical")
    simulate.add_argument("--sam-checkpoint", default=os.environ.get("SAM_CHECKPOINT") or None)
    simulate.add_argument("--limit", type=int)
    simulate.set_defaults(run=_simulate)

    def add_scope(command: argparse.ArgumentParser) -> None:
        command.add_argument("--data-dir", default=os.environ.get("SEGAGENT_DATA_DIR") or "data",
                             help="the backend's data folder (SEGAGENT_DATA_DIR)")
        command.add_argument("--project", help="the Label Studio project whose policy this is")
        command.add_argument("--shared", action="store_true", help="the policy all projects share")

    train = commands.add_parser("train", help="LoRA fine-tuning on the trajectories, gated, into the registry")
    add_scope(train)
    train.add_argument("--base", default=os.environ.get("SEGAGENT_POLICY", ""),
                       help="the base policy, a local path or hub id (default: SEGAGENT_POLICY)")
    train.add_argument("--base-adapter", default=os.environ.get("SEGAGENT_POLICY_ADAPTER", ""),
                       help="the adapter the base version serves with (default: SEGAGENT_POLICY_ADAPTER)")
    train.add_argument("--tool", choices=TOOL_NAMES, default=os.environ.get("SEGAGENT_TOOL") or "classical",
                       help="the tool of the gate's episodes")
    train.add_argument("--sam-checkpoint", default=os.environ.get("SAM_CHECKPOINT") or None)
    train.add_argument("--epochs", type=int, default=int(os.environ.get("SEGAGENT_TRAIN_EPOCHS") or 1))
    train.add_argument("--learning-rate", type=float, default=float(os.environ.get("SEGAGENT_TRAIN_LR") or 2e-4))
    train.add_argument("--lora-rank", type=int, default=16)
    train.add_argument("--accumulation", type=int, default=4, help="turns per optimizer step")
    train.add_argument("--max-turns", type=int, default=4000, help="turns per epoch, newest first")
    train.add_argument("--held-out", type=float, default=0.2, help="fraction of tasks held out for the gate")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--gate-turns", type=int, default=200, help="held-out steps asked for their next action")
    train.add_argument("--gate-episodes", type=int, default=int(os.environ.get("SEGAGENT_GATE_EPISODES") or 16),
                       help="held-out objects segmented from scratch")
    train.add_argument("--gate-steps", type=int, default=int(os.environ.get("SEGAGENT_AGENT_STEPS") or 5),
                       help="agent steps per gate episode")
    train.add_argument("--tolerance", type=float, default=float(os.environ.get("SEGAGENT_GATE_TOLERANCE") or 0),
                       help="how much worse a candidate may be")
    train.set_defaults(run=_train)

    versions = commands.add_parser("versions", help="the policy versions of a project, and which one is active")
    add_scope(versions)
    versions.set_defaults(run=_versions)

    rollback = commands.add_parser("rollback", help="serve an earlier version again (default: the active one's parent)")
    add_scope(rollback)
    rollback.add_argument("--to", help="the version to serve: v0 (the base), v1, ...")
    rollback.set_defaults(run=_rollback)

    serve = commands.add_parser("serve-policy", help="an OpenAI-compatible server over a transformers VLM")
    serve.add_argument("--policy", required=True, help="local path or hub id")
    serve.add_argument("--policy-adapter", help="a LoRA adapter on top")
    serve.add_argument("--model-id", help="the model name the server reports (default: the folder name)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(run=_serve_policy)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from model.flywheel.registry import RegistryError

    try:
        return args.run(args)
    except RegistryError as exc:
        raise SystemExit(f"error: {exc}") from exc


if __name__ == "__main__":
    sys.exit(main())
