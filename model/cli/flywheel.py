"""python -m model export | simulate | train | versions | rollback: the flywheel's data, training jobs
and versions, on the backend's data folder; bench-flywheel: what one training job gains on a dataset."""
from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

from model.cli.benchmarks import at_least
from model.core.datasets import open_dataset
from model.settings import Settings
from model.tools import TOOL_NAMES, make_segmenter, tool_options


def add_commands(commands: argparse._SubParsersAction, settings: Settings) -> None:
    export = commands.add_parser("export", help="trajectories as supervised turns (ShareGPT, LLaMA-Factory)")
    export.add_argument("--data-dir", type=Path, default=settings.data_dir,
                        help="the backend's data folder (SEGAGENT_DATA_DIR)")
    export.add_argument("--out", required=True)
    export.add_argument("--format", choices=("sharegpt",), default="sharegpt")
    export.add_argument("--project", help="only this Label Studio project's trajectories")
    export.add_argument("--color", default="green", help="overlay colour of the observations")
    export.add_argument("--policy-format", default=settings.policy_format, choices=("segagent", "segagent-qwen"),
                        help="the policy family the turns are for: what it is shown and how it writes points")
    export.set_defaults(run=_export)

    simulate = commands.add_parser("simulate", help="the simulated annotator's trajectories toward a dataset's "
                                                    "masks, into a project's training data (a head start)")
    simulate.add_argument("--dataset", required=True)
    simulate.add_argument("--images", help="image folder for a JSON dataset")
    simulate.add_argument("--data-dir", type=Path, default=settings.data_dir)
    simulate.add_argument("--project", required=True, help="the Label Studio project id they belong to")
    simulate.add_argument("--label", default="Object", help="the label (and the description when a sample has none)")
    simulate.add_argument("--tool", choices=TOOL_NAMES, default=settings.tool)
    simulate.add_argument("--sam-checkpoint", default=settings.sam_checkpoint or None)
    simulate.add_argument("--limit", type=at_least(1), help="only the first N samples")
    simulate.set_defaults(run=_simulate)

    _add_train(commands, settings)

    versions = commands.add_parser("versions", help="the policy versions of a project, and which one is active")
    _add_scope(versions, settings)
    versions.set_defaults(run=_versions)

    rollback = commands.add_parser("rollback", help="serve an earlier version again (default: the active one's parent)")
    _add_scope(rollback, settings)
    rollback.add_argument("--to", help="the version to serve: v0 (the base), v1, ...")
    rollback.set_defaults(run=_rollback)

    _add_bench_flywheel(commands, settings)


def _add_scope(command: argparse.ArgumentParser, settings: Settings) -> None:
    command.add_argument("--data-dir", type=Path, default=settings.data_dir,
                         help="the backend's data folder (SEGAGENT_DATA_DIR)")
    command.add_argument("--project", help="the Label Studio project whose policy this is")
    command.add_argument("--shared", action="store_true", help="the policy all projects share")


def _add_train(commands: argparse._SubParsersAction, settings: Settings) -> None:
    """Every flag of `train` but the scope's stands for a setting, named by its dest."""
    train = commands.add_parser("train", help="LoRA fine-tuning on the trajectories, gated, into the registry")
    _add_scope(train, settings)
    setting = functools.partial(_setting, train, settings)
    setting("--base", "policy", help="the base policy, a local path or hub id (default: SEGAGENT_POLICY)")
    setting("--base-adapter", "policy_adapter",
            help="the adapter the base version serves with (default: SEGAGENT_POLICY_ADAPTER)")
    train.add_argument("--tool", choices=TOOL_NAMES, default=settings.tool, help="the tool of the gate's episodes")
    setting("--sam-checkpoint", "sam_checkpoint")
    setting("--epochs", "train_epochs", type=int)
    setting("--learning-rate", "train_learning_rate", type=float)
    setting("--lora-rank", "train_lora_rank", type=int)
    setting("--accumulation", "train_accumulation", type=int, help="turns per optimizer step")
    setting("--max-turns", "train_max_turns", type=int, help="turns per epoch, newest first")
    setting("--held-out", "train_held_out", type=float, help="fraction of tasks held out for the gate")
    setting("--seed", "train_seed", type=int)
    setting("--gate-turns", "gate_turns", type=int, help="held-out steps asked for their next action")
    setting("--gate-episodes", "gate_episodes", type=int, help="held-out objects segmented from scratch")
    setting("--gate-steps", "agent_steps", type=int, help="agent steps per gate episode")
    setting("--tolerance", "gate_tolerance", type=float, help="how much worse a candidate may be")
    train.set_defaults(run=_train)


def _setting(command: argparse.ArgumentParser, settings: Settings, flag: str, dest: str, **options) -> None:
    """A flag that stands for the setting `dest`, its default the setting's value."""
    command.add_argument(flag, dest=dest, default=getattr(settings, dest),
                         metavar=flag.lstrip("-").upper().replace("-", "_"), **options)


def _add_bench_flywheel(commands: argparse._SubParsersAction, settings: Settings) -> None:
    """Its flags that share a name with a setting's field stand for that setting (the job's settings)."""
    bench = commands.add_parser("bench-flywheel", help="what one training job gains on a dataset's held-out "
                                                       "objects: mIoU after the agent's steps, clicks to IoU 0.85/0.90")
    bench.add_argument("--dataset", required=True)
    bench.add_argument("--images", help="image folder for a JSON dataset")
    bench.add_argument("--limit", type=at_least(1), help="only the first N samples")
    bench.add_argument("--held-out", type=float, default=0.5, help="fraction of the objects held out (by name)")
    bench.add_argument("--split-seed", type=int, default=0, help="seed of the held-out split")
    bench.add_argument("--max-clicks", type=int, default=20, help="the annotator's clicks per object at most")
    bench.add_argument("--batch-size", type=int, default=8, help="episodes the agent advances together")
    bench.add_argument("--out", type=Path, default=Path("bench/flywheel"), help="report.json and report.md")
    bench.add_argument("--data-dir", type=Path, help="a fresh work folder: trajectories, registry (default: OUT/data)")
    bench.add_argument("--project", default="1", help="the project the trajectories are filed under")
    bench.add_argument("--shared", action="store_true", help="train the policy all projects share")
    setting = functools.partial(_setting, bench, settings)
    setting("--policy", "policy", help="the base policy: a path, hub id or endpoint (default: SEGAGENT_POLICY)")
    setting("--policy-format", "policy_format", choices=("segagent", "segagent-qwen"))
    bench.add_argument("--tool", choices=TOOL_NAMES, default=settings.tool)
    setting("--sam-checkpoint", "sam_checkpoint")
    setting("--device", "device", choices=("auto", "cuda", "cpu"),
            help="where the SAM tools, an in-process policy and its training run")
    setting("--steps", "agent_steps", type=int, help="agent steps per episode, the gate's too")
    setting("--epochs", "train_epochs", type=int)
    setting("--learning-rate", "train_learning_rate", type=float)
    setting("--accumulation", "train_accumulation", type=int, help="turns per optimizer step")
    setting("--gate-episodes", "gate_episodes", type=int, help="the gate's held-out objects segmented from scratch")
    bench.set_defaults(run=_bench_flywheel)


def _scope(args: argparse.Namespace) -> str:
    from model.flywheel.scopes import scope_for

    if not args.shared and not args.project:
        raise SystemExit("give --project ID (a Label Studio project) or --shared")
    return scope_for(args.project or "", shared=args.shared)


def _export(args: argparse.Namespace) -> int:
    from model.flywheel.export import export_sharegpt
    from model.flywheel.stores import trajectory_store

    settings = args.settings.model_copy(update={"data_dir": args.data_dir})
    if not settings.database_url and not (args.data_dir / "trajectories" / "trajectories.sqlite3").exists():
        raise SystemExit(f"no trajectory store under {args.data_dir / 'trajectories'}")
    count = export_sharegpt(trajectory_store(settings), args.out, project=args.project, color=args.color,
                            observation=args.policy_format)
    print(f"{count} supervised turns -> {args.out}")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from model.flywheel.scopes import scope_for
    from model.flywheel.sources import simulated
    from model.flywheel.stores import trajectory_store

    project = args.project
    scope_for(project)  # a project id, as Label Studio numbers them
    store = trajectory_store(args.settings.model_copy(update={"data_dir": args.data_dir}))
    segmenter = make_segmenter(args.tool, **{**tool_options(args.settings), "sam_checkpoint": args.sam_checkpoint,
                                             "data_dir": args.data_dir})
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


def _train(args: argparse.Namespace) -> int:
    from model.flywheel.job import JobSpec, run_job
    from model.flywheel.registry import JobState

    if not args.policy:
        raise SystemExit("give --base (or set SEGAGENT_POLICY): the policy the adapters are trained for")
    flags = {name: value for name, value in vars(args).items() if name in Settings.model_fields}
    settings = Settings.model_validate({**args.settings.model_dump(), **flags})
    result = run_job(JobSpec(scope=_scope(args), settings=settings))
    print(json.dumps(result.to_json(), indent=2))
    return 0 if result.state in (JobState.promoted, JobState.rejected, JobState.skipped) else 1


def _versions(args: argparse.Namespace) -> int:
    from model.flywheel.stores import policy_registry

    registry, scope = policy_registry(args.settings.model_copy(update={"data_dir": args.data_dir})), _scope(args)
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
    from model.flywheel.stores import policy_registry

    registry, scope = policy_registry(args.settings.model_copy(update={"data_dir": args.data_dir})), _scope(args)
    version = registry.rollback(scope, args.to)
    print(f"{scope}: {version} is active")
    return 0


def _bench_flywheel(args: argparse.Namespace) -> int:
    from model.benchmarks.flywheel import BenchConfig, BenchError, run_bench, table, write_report

    if not args.policy:
        raise SystemExit("give --policy (or set SEGAGENT_POLICY): the base policy to train")
    if not 0 < args.held_out < 1 or args.max_clicks < 1:
        raise SystemExit("--held-out is a fraction between 0 and 1 (both excluded), --max-clicks at least 1")
    flags = {name: value for name, value in vars(args).items() if name in Settings.model_fields}
    flags["data_dir"] = args.data_dir or args.out / "data"
    settings = Settings.model_validate({**args.settings.model_dump(), **flags})
    config = BenchConfig(held_out=args.held_out, seed=args.split_seed, max_clicks=args.max_clicks,
                         batch_size=args.batch_size, project=args.project, shared=args.shared)
    dataset = open_dataset(args.dataset, args.images).limit(args.limit)
    try:
        report = run_bench(dataset, settings, config)
    except BenchError as exc:
        raise SystemExit(f"error: {exc}") from exc
    write_report(args.out, report)
    print(table(report))
    print(f"-> {args.out / 'report.json'}")
    return 0 if report["trained"] else 1
