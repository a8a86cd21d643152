"""python -m model settings-doc: docs/configuration.md rendered from the settings model (what `make docs` runs)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_commands(commands: argparse._SubParsersAction) -> None:
    doc = commands.add_parser("settings-doc", help="render the configuration page from the settings' descriptions")
    doc.add_argument("--out", type=Path, help="write the page to this file (default: print it)")
    doc.set_defaults(run=_settings_doc)


def _settings_doc(args: argparse.Namespace) -> int:
    from model.settings_docs import render

    page = render()
    if args.out is None:
        sys.stdout.write(page)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(page)
        print(f"{args.out}: {len(page.splitlines())} lines")
    return 0
