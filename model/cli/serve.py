"""python -m model serve-policy: an OpenAI-compatible server over a transformers VLM."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_commands(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve-policy", help="an OpenAI-compatible server over a transformers VLM")
    serve.add_argument("--policy", required=True, help="local path or hub id")
    serve.add_argument("--policy-adapter", help="a LoRA adapter on top")
    serve.add_argument("--model-id", help="the model name the server reports (default: the folder name)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(run=_serve_policy)


def _serve_policy(args: argparse.Namespace) -> int:
    from werkzeug.serving import run_simple

    from model.policies.server import create_policy_app
    from model.policies.transformers_vlm import TransformersPolicy

    policy = TransformersPolicy(args.policy, adapter=args.policy_adapter)
    app = create_policy_app(policy, args.model_id or Path(args.policy).name)
    run_simple(args.host, args.port, app, threaded=True)
    return 0
