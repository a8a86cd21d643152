"""A tiny SAM 3 built from configs (random weights, a CLIP BPE tokenizer made here from a byte-level vocabulary),
saved as facebook/sam3 is (transformers' Sam3VideoModel: the detector, the tracker and the tracker's neck, with
a Sam3Processor beside it), so that tests load it by path through the same code users use (SAM3_CHECKPOINT).

    folder = build_tiny_sam3(tmp_path / "sam3")  # about 0.4 M parameters, a second to build

`tiny_sam3_folder(tmp_path_factory)` builds it once per test session for tests that share it (read-only)."""
from __future__ import annotations

from pathlib import Path

import torch

IMAGE_SIZE = 112  # 8 x 8 patches of 14
HIDDEN = 32
# a few words the tests look for, merged whole by the BPE (every other word goes letter by letter)
WORDS = ("cat", "dog", "car")


def byte_alphabet() -> list[str]:
    """CLIP's (GPT-2's) byte-level alphabet: each of the 256 bytes as a printable character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def build_tokenizer():
    from transformers import CLIPTokenizer

    alphabet = byte_alphabet()
    tokens = [*alphabet, *(letter + "</w>" for letter in alphabet)]
    merges: list[tuple[str, str]] = []
    for word in WORDS:  # c a -> ca, ca t</w> -> cat</w>
        merges += [(word[0], word[1]), (word[:2], word[2] + "</w>")]
        tokens += [word[:2], word + "</w>"]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    return CLIPTokenizer(vocab=vocab, merges=merges)


def tiny_config(vocab_size: int, bos: int, eos: int):
    from transformers import Sam3VideoConfig

    vision = {"model_type": "sam3_vision_model", "fpn_hidden_size": HIDDEN,
              "backbone_feature_sizes": [[32, 32], [16, 16], [8, 8]],
              "backbone_config": {"model_type": "sam3_vit_model", "hidden_size": HIDDEN, "intermediate_size": 64,
                                  "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": IMAGE_SIZE,
                                  "patch_size": 14, "window_size": 4, "global_attn_indexes": [1],
                                  "pretrain_image_size": 56}}
    small = {"hidden_size": HIDDEN, "num_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    detector = {
        "vision_config": vision,
        "text_config": {"model_type": "clip_text_model", "vocab_size": vocab_size, "hidden_size": HIDDEN,
                        "intermediate_size": 64, "projection_dim": HIDDEN, "num_hidden_layers": 1,
                        "num_attention_heads": 2, "max_position_embeddings": 32, "hidden_act": "gelu",
                        "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": eos},
        "geometry_encoder_config": small, "detr_encoder_config": small,
        "detr_decoder_config": {**small, "num_queries": 12},
        "mask_decoder_config": {"hidden_size": HIDDEN, "num_attention_heads": 2},
    }
    tracker = {
        "vision_config": vision, "image_size": IMAGE_SIZE,
        "prompt_encoder_config": {"hidden_size": HIDDEN, "image_size": IMAGE_SIZE, "patch_size": 14},
        "mask_decoder_config": {"hidden_size": HIDDEN, "mlp_dim": 64, "num_attention_heads": 2,
                                "iou_head_hidden_dim": HIDDEN},
        "memory_attention_hidden_size": HIDDEN, "memory_attention_num_layers": 1,
        "memory_attention_feed_forward_hidden_size": 64, "memory_attention_rope_feat_sizes": [8, 8],
        "memory_encoder_hidden_size": HIDDEN, "memory_encoder_output_channels": 16,
        "mask_downsampler_embed_dim": HIDDEN, "memory_fuser_embed_dim": HIDDEN, "memory_fuser_intermediate_dim": 64,
    }
    return Sam3VideoConfig(detector_config=detector, tracker_config=tracker)


def build_tiny_sam3(folder: Path, seed: int = 0) -> Path:
    """Write a tiny random SAM 3 and its processor into folder (save_pretrained, as facebook/sam3 is laid out)."""
    from transformers import Sam3ImageProcessor, Sam3Processor, Sam3VideoModel

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    config = tiny_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    model = Sam3VideoModel(config).eval()
    folder = Path(folder)
    model.save_pretrained(folder)
    image_processor = Sam3ImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                         mask_size={"height": 32, "width": 32})
    Sam3Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def tiny_sam3_folder(tmp_path_factory) -> Path:
    """The tiny SAM 3, built once per test session (pass pytest's tmp_path_factory); do not write into it."""
    folder = tmp_path_factory.getbasetemp() / "tiny_sam3"
    if not (folder / "config.json").is_file():
        build_tiny_sam3(folder)
    return folder
