"""Command line: python -m model evaluate | score | fit-scorer | quality-stream | export | simulate | train |
bench-flywheel | versions | rollback | serve-policy | preannotate | observe | settings-doc"""
from __future__ import annotations

import argparse
import logging

from pydantic import ValidationError

from model.cli import benchmarks, docs, flywheel, observe, preannotate, quality_stream, serve
from model.settings import Settings


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    """The parser of every command; flags that stand for a setting default to `settings`."""
    parser = argparse.ArgumentParser(prog="python -m model", description=__doc__)
    parser.set_defaults(settings=settings)
    commands = parser.add_subparsers(dest="command", required=True)
    benchmarks.add_commands(commands, settings)
    quality_stream.add_commands(commands)
    flywheel.add_commands(commands, settings)
    serve.add_commands(commands)
    preannotate.add_commands(commands)
    observe.add_commands(commands)
    docs.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    from model.flywheel.registry import RegistryError

    try:
        args = build_parser(Settings()).parse_args(argv)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return args.run(args)
    except (RegistryError, ValidationError) as exc:
        raise SystemExit(f"error: {exc}") from exc
