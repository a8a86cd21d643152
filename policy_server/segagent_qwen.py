"""The released SegAgent-Qwen checkpoint (a Qwen-VL-Chat fine-tune) behind the OpenAI-compatible
protocol the backend speaks (model/policies/remote.py with SEGAGENT_POLICY_FORMAT=segagent-qwen), with
every trained version of it served beside the base.

Qwen-VL-Chat runs its own remote code, which needs an old transformers (4.32): this server runs in its
own environment, `requirements-segagent-qwen.lock`, started with
    python -m policy_server.segagent_qwen --model /path/or/modelscope-id --registry /data/models --port 8000
It gives the model the exact turn SegAgent's evaluation code gives it, with the observation written to a
file as the client encoded it (the backend sends the official full-resolution JPEG; Qwen-VL's own
transform resizes it), and returns its answer with Qwen-VL's tags kept: "Positive point: (row, column)"
in [0, 1000), optionally after "<ref>...</ref><box>(x1,y1),(x2,y2)</box>".

Models: `segagent-qwen` is the base; `segagent-qwen@<scope>/<version>` (project-3/v2, shared/v1) is a
version the flywheel trained, whose LoRA adapter lies in the registry folder shared with the backend. It is
loaded on its first request, without a restart; /v1/models lists the registered ones.
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path

from model.flywheel.registry import Registry, RegistryError
from model.policies.model_names import parse_versioned_model, versioned_model
from model.policies.openai_protocol import BadChatRequest, ChatRequest, ModelUnavailable, UnknownModel, create_chat_app
from model.tools.loading import DeviceError
from policy_server.qwen_model import DEFAULT_MODEL, AdapterError, PromptError, QwenPolicyModel

log = logging.getLogger("segagent-qwen")
MODEL_ID = "segagent-qwen"
SUFFIXES = {"image/jpeg": ".jpg", "image/jpg": ".jpg", "image/png": ".png", "image/webp": ".webp"}


class SegAgentQwenServer:
    def __init__(self, policy: QwenPolicyModel, registry: Registry | None):
        self.policy = policy
        self.registry = registry

    def model_ids(self) -> list[str]:
        ids = [MODEL_ID]
        if self.registry is not None:
            for scope in self.registry.scopes():
                ids += [versioned_model(MODEL_ID, scope, meta["name"]) for meta in self.registry.versions(scope)
                        if self.registry.adapter_path(scope, meta["name"]).is_dir()]
        return ids

    def adapter(self, model: str | None) -> tuple[str, str] | None:
        """(name, folder) of the adapter a model name asks for; None for the base."""
        if model in (None, MODEL_ID):
            return None
        parsed = parse_versioned_model(model)
        if parsed is None or parsed[0] != MODEL_ID:
            raise UnknownModel(f"unknown model {model!r}: {MODEL_ID!r} or '{MODEL_ID}@<scope>/<version>'")
        if self.registry is None:
            raise UnknownModel(f"{model!r}: this server has no registry (--registry) to load versions from")
        _, scope, version = parsed
        try:
            folder = self.registry.adapter_path(scope, version)
        except RegistryError as exc:
            raise UnknownModel(str(exc)) from exc
        # a version being gated has its adapter but no metadata yet: it is served, not listed
        try:
            written = (folder / "adapter_config.json").stat().st_mtime_ns
        except FileNotFoundError:
            raise UnknownModel(f"{scope} has no trained version {version}") from None
        # the name of a version a killed job left unregistered is given again to the next job's: the loaded
        # adapter is known by when it was written too, so that a new one is never answered with the old one
        return f"{scope}_{version}_{written}".replace("-", "_"), str(folder)

    def answer(self, request: ChatRequest) -> list[str]:
        adapter = self.adapter(request.model)
        suffix = SUFFIXES.get(request.media_type)
        if suffix is None:
            raise BadChatRequest(f"images must be one of {', '.join(sorted(SUFFIXES))}, not {request.media_type}")
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "observation" + suffix)
            Path(path).write_bytes(request.image)  # as sent: re-encoding would add a second JPEG's loss
            _check_decodes(path)
            try:
                return self.policy.answer(path, request.text, request.samples, request.temperature, adapter,
                                          request.max_tokens)
            except PromptError as exc:
                raise BadChatRequest(str(exc)) from exc
            except AdapterError as exc:
                raise ModelUnavailable(str(exc)) from exc

    def health(self) -> dict:
        # "base": where the trainer of this environment finds the very weights served here
        return {"device": self.policy.device, "base": self.policy.path,
                "registry": str(self.registry.root) if self.registry else None}


def _check_decodes(path: str) -> None:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as exc:
        raise BadChatRequest(f"the image does not decode: {exc}") from exc


def create_app(server: SegAgentQwenServer):
    return create_chat_app(server.answer, server.model_ids, server.health)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("SEGAGENT_QWEN_MODEL", DEFAULT_MODEL),
                        help="a local folder, or a ModelScope id fetched on first start")
    parser.add_argument("--cache-dir", default=os.environ.get("SEGAGENT_QWEN_CACHE", "/models"))
    parser.add_argument("--registry", default=os.environ.get("SEGAGENT_REGISTRY") or None,
                        help="the flywheel's registry folder (the backend's SEGAGENT_DATA_DIR/models), shared")
    parser.add_argument("--device", default=os.environ.get("SEGAGENT_DEVICE", "auto"), choices=("auto", "cuda", "cpu"))
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        policy = QwenPolicyModel(args.model, args.cache_dir, args.device)
    except DeviceError as exc:
        raise SystemExit(f"SEGAGENT_DEVICE={args.device}: {exc}") from exc
    registry = Registry(args.registry) if args.registry else None
    log.info("serving %s on %s, versions from %s", MODEL_ID, policy.device, args.registry or "nowhere (no --registry)")
    create_app(SegAgentQwenServer(policy, registry)).run(host=args.host, port=args.port, threaded=True)


if __name__ == "__main__":
    main()
