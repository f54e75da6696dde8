"""Not a benchmark: writes a random-weight transformers CLIP at ViT-B/32's sizes, with a CLIPProcessor, as a
``save_pretrained`` folder, so that ``evaluate_speed.py --models hf:DIR`` can time an ``hf:`` model where
the hub cannot be reached. The vision tower and the image processor are those of
``openai/clip-vit-base-patch32`` (transformers' CLIPConfig defaults: 224 px, patch 32, 12 layers of 768;
resize the shorter side to 224, bicubic, centre crop 224); the tokenizer is a real byte-level CLIPTokenizer
over a small vocabulary, which only the text side (encoded once per class set) sees.

    PYTHONPATH=src .venv/bin/python benchmarks/hf_random_clip.py /tmp/hf-vit-b-32
    PYTHONPATH=src .venv/bin/python benchmarks/evaluate_speed.py --models timm:resnet50.a1_in1k hf:/tmp/hf-vit-b-32
"""

from __future__ import annotations

import argparse
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the folder to write (config.json, weights, processor files)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def write_random_clip(out: Path, seed: int = 0) -> Path:
    """``out`` holding a random ViT-B/32-sized CLIPModel and its processor."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    eos = vocab["<|endoftext|>"]
    config = CLIPConfig(text_config=dict(vocab_size=len(vocab), bos_token_id=vocab["<|startoftext|>"],
                                         eos_token_id=eos, pad_token_id=eos))
    torch.manual_seed(seed)
    model = CLIPModel(config)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    folder = write_random_clip(args.out, args.seed)
    print(f"wrote {folder}: use it as hf:{folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
