"""A tiny, randomly initialised model of the Qwen-VL-Chat architecture (the released SegAgent checkpoint's),
built from Qwen-VL-Chat's own remote code, for tests of the SegAgent-Qwen policy server and its training.

    SEGAGENT_QWEN_PYTHON -m tests.tiny_qwen_vl CODE_DIR OUT_DIR

CODE_DIR holds Qwen-VL-Chat's remote code and tokenizer (configuration_qwen.py, modeling_qwen.py,
qwen_generation_utils.py, tokenization_qwen.py, visual.py, qwen.tiktoken, tokenizer_config.json,
config.json); it is read, never committed. Runs in the policy server's environment (transformers 4.32).
The vocabulary stays the real one (the tokenizer's), everything else shrinks: about 40 M parameters,
nearly all of them the embeddings (the resampler needs a width of 128 at least: a head per 128).
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

REMOTE_CODE = ("configuration_qwen.py", "modeling_qwen.py", "qwen_generation_utils.py", "tokenization_qwen.py",
               "visual.py", "qwen.tiktoken", "tokenizer_config.json")
SMALL = {"hidden_size": 128, "num_attention_heads": 2, "kv_channels": 64, "intermediate_size": 128,
         "num_hidden_layers": 2, "seq_length": 2048, "use_flash_attn": False, "bf16": False, "fp16": False,
         "fp32": True, "use_dynamic_ntk": False, "use_logn_attn": False}
SMALL_VISUAL = {"heads": 2, "layers": 1, "width": 32, "mlp_ratio": 2.0, "output_dim": 128, "image_size": 448,
                "patch_size": 14}


def build(code_dir: str | Path, out: str | Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    code_dir, out = Path(code_dir), Path(out)
    missing = [name for name in (*REMOTE_CODE, "config.json") if not (code_dir / name).exists()]
    if missing:
        raise SystemExit(f"{code_dir} lacks Qwen-VL-Chat's {', '.join(missing)}")
    out.mkdir(parents=True, exist_ok=True)
    for name in REMOTE_CODE:
        shutil.copy(code_dir / name, out / name)
    config = AutoConfig.from_pretrained(str(code_dir), trust_remote_code=True)
    for key, value in SMALL.items():
        setattr(config, key, value)
    config.visual = {**config.visual, **SMALL_VISUAL}
    config.quantization_config = None
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, trust_remote_code=True, torch_dtype=torch.float32)
    model.save_pretrained(str(out), safe_serialization=True)
    GenerationConfig(chat_format="chatml", eos_token_id=151643, pad_token_id=151643, max_window_size=6144,
                     max_new_tokens=32, do_sample=False).save_pretrained(str(out))
    for name in REMOTE_CODE:  # save_pretrained may drop the tokenizer's files
        if not (out / name).exists():
            shutil.copy(code_dir / name, out / name)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    print(build(sys.argv[1], sys.argv[2]))
