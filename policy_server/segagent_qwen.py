"""The released SegAgent-Qwen checkpoint (a Qwen-VL-Chat fine-tune) behind the OpenAI-compatible
protocol the backend speaks (model/policies/remote.py with SEGAGENT_POLICY_FORMAT=segagent-qwen).

Qwen-VL-Chat runs its own remote code, which needs an old transformers (4.32): this server runs in its
own environment, `requirements-segagent-qwen.txt`, started with
    python -m policy_server.segagent_qwen --model /path/or/modelscope-id --port 8000
It gives the model the exact turn SegAgent's evaluation code gives it (model/prompts.py) and returns
its answer untouched: "Positive point: (row, column)" in [0, 1000), optionally after
"<ref>...</ref><box>(x1,y1),(x2,y2)</box>".
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
import threading

from model.policies.openai_protocol import create_chat_app
from model.policies.prompts import SEGAGENT_QWEN_TURN

log = logging.getLogger("segagent-qwen")
DEFAULT_MODEL = "zzzmmz/SegAgent-Model"  # on ModelScope


def build_prompt(image_path: str, text: str) -> str:
    """The whole chat turn, as SegAgent's evaluation code builds it (the image is referenced by path)."""
    return SEGAGENT_QWEN_TURN.format(image=image_path, text=text)


class QwenVLChat:
    def __init__(self, model: str, cache_dir: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = model if os.path.isdir(model) else _download(model, cache_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
        self.tokenizer.padding_side = "left"
        self.model = AutoModelForCausalLM.from_pretrained(
            path, device_map="cuda" if torch.cuda.is_available() else "cpu", trust_remote_code=True).eval()
        self._lock = threading.Lock()

    def answer(self, image, text: str, samples: int, temperature: float) -> list[str]:
        import torch

        with tempfile.TemporaryDirectory() as folder:
            image_path = os.path.join(folder, "observation.png")
            image.save(image_path)
            prompt = build_prompt(image_path, text)
            input_ids = self.tokenizer([prompt], return_tensors="pt").input_ids.to(self.model.device)
            stop_words_ids = [[self.tokenizer.im_end_id], [self.tokenizer.im_start_id]]
            sampling = samples > 1 or temperature > 0
            with self._lock, torch.inference_mode():
                output = self.model.generate(
                    input_ids, stop_words_ids=stop_words_ids, generation_config=self.model.generation_config,
                    do_sample=sampling, num_return_sequences=samples,
                    **({"temperature": max(temperature, 0.7), "top_p": 0.95} if sampling else {}))
        answers = []
        for row in output:
            answer = self.tokenizer.decode(row[input_ids.shape[1]:], skip_special_tokens=True)
            assert isinstance(answer, str)  # one sequence of ids decodes to one string
            answers.append(answer.strip())
        return answers


def _download(model_id: str, cache_dir: str | None) -> str:
    from modelscope import snapshot_download

    log.info("fetching %s from ModelScope into %s (first start only)", model_id, cache_dir)
    return snapshot_download(model_id, cache_dir=cache_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("SEGAGENT_QWEN_MODEL", DEFAULT_MODEL),
                        help="a local folder, or a ModelScope id fetched on first start")
    parser.add_argument("--cache-dir", default=os.environ.get("SEGAGENT_QWEN_CACHE", "/models"))
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    app = create_chat_app(QwenVLChat(args.model, args.cache_dir).answer, "segagent-qwen")
    app.run(host=args.host, port=args.port, threaded=True)


if __name__ == "__main__":
    main()
