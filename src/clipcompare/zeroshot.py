"""Zero-shot heads: class names × prompt templates → one L2-normalised text embedding per class.

Each prompt embedding is normalised, averaged over templates, and normalised again (as in CLIP and
open_clip's ``build_zero_shot_classifier``). Prompts are encoded sorted by length, each batch
truncated to its longest prompt instead of the full 77-token context: CLIP's text transformer is
causal and pools at the end-of-text token, so positions after it never influence the result, while
the work shrinks several-fold (most ImageNet prompts are under 20 tokens).
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from clipcompare.cache import cached_tensor
from clipcompare.errors import UserError

Template = str | Callable[[str], str]
SINGLE_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)


def load_templates(name_or_path: str) -> list[Template]:
    """``single``, ``openai`` (open_clip's 80 ImageNet templates) or a file with one ``{}`` template per line.

    ``dataset`` loads openai's: the classifier uses a dataset's own templates (``ClassSet.templates``) instead
    wherever it has them.
    """
    if name_or_path == "single":
        return list(SINGLE_TEMPLATES)
    if name_or_path in ("openai", "dataset"):  # dataset: each dataset's own templates, openai's where it has none
        from open_clip import OPENAI_IMAGENET_TEMPLATES

        return list(OPENAI_IMAGENET_TEMPLATES)
    path = Path(name_or_path)
    if not path.is_file():
        raise UserError(f"--templates: expected 'single', 'openai', 'dataset' or a file, got {name_or_path!r}")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    numbered = [(n, ln) for n, ln in enumerate(lines, 1) if ln and not ln.startswith("#")]
    if not numbered:
        raise UserError(f"template file {path} has no templates")
    for n, template in numbered:
        if not _one_class_field(template):
            raise UserError(f"{path}:{n}: a template needs exactly one '{{}}' (the class name) and no other "
                            f"braces ('{{{{' and '}}}}' for literal ones), not {template!r}")
    return [t for _, t in numbered]


def _one_class_field(template: str) -> bool:
    """Whether ``template.format(name)`` fills exactly one plain ``{}`` and nothing else (as open_clip's do)."""
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError:  # an unmatched '{' or '}'
        return False
    return fields == [("", "", None)]


def render_prompts(classnames: Sequence[str], templates: Sequence[Template]) -> list[str]:
    """Prompts class-major: all templates of class 0, then class 1, ..."""
    return [t.format(c) if isinstance(t, str) else t(c) for c in classnames for t in templates]


def _text_tower(model: nn.Module) -> nn.Module | None:
    """The module holding the causal text transformer, or None when trimming is not valid."""
    tower = model.text if hasattr(model, "text") and hasattr(model.text, "token_embedding") else model
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final")
    if not all(hasattr(tower, n) for n in needed):
        return None
    pool = getattr(tower, "text_pool_type", getattr(tower, "pool_type", "argmax"))
    # trimming is exact only for a causal mask and pooling at the end-of-text token
    if getattr(tower, "attn_mask", None) is None or pool not in ("argmax", "eos"):
        return None
    if getattr(tower, "cls_emb", None) is not None:
        return None
    return tower


def _encode_trimmed(tower: nn.Module, tokens: torch.Tensor, eot_pos: torch.Tensor) -> torch.Tensor:
    length = int(eot_pos.max()) + 1
    tokens = tokens[:, :length]
    cast_dtype = tower.transformer.get_cast_dtype() if hasattr(tower.transformer, "get_cast_dtype") else tokens.dtype
    x = tower.token_embedding(tokens).to(cast_dtype)
    x = x + tower.positional_embedding[:length].to(cast_dtype)
    x = tower.transformer(x, attn_mask=tower.attn_mask[:length, :length])
    x = tower.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), eot_pos]
    proj = tower.text_projection
    if proj is not None:
        x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
    return x


def _eot_positions(tower: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    pool = getattr(tower, "text_pool_type", getattr(tower, "pool_type", "argmax"))
    if pool == "eos":
        eos = getattr(tower, "text_eos_id", None)
        return (tokens == eos).int().argmax(dim=-1)
    return tokens.argmax(dim=-1)  # OpenAI BPE: end-of-text has the highest id


@torch.no_grad()
def encode_prompts(
    model: nn.Module,
    tokenizer: Callable[..., torch.Tensor],
    prompts: Sequence[str],
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    trim: bool = True,
) -> torch.Tensor:
    """L2-normalised text embeddings of ``prompts`` in their given order, shape [N, D]."""
    tokens = tokenizer(list(prompts)).to(device)
    tower = _text_tower(model) if trim else None
    if tower is None:
        out = [model.encode_text(tokens[i : i + batch_size]) for i in range(0, len(tokens), batch_size)]
        return F.normalize(torch.cat(out).float(), dim=-1)
    eot = _eot_positions(tower, tokens)
    order = torch.argsort(eot)  # similar lengths share a batch, so each batch trims further
    feats = torch.empty(len(prompts), _embed_dim(model, tower), device=device)
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        feats[idx] = _encode_trimmed(tower, tokens[idx], eot[idx]).float()
    return F.normalize(feats, dim=-1)


def _embed_dim(model: nn.Module, tower: nn.Module) -> int:
    proj = tower.text_projection
    if proj is None:
        return tower.ln_final.normalized_shape[0]
    return proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1]


def build_head(
    model: nn.Module,
    tokenizer: Callable[..., torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[Template],
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    trim: bool = True,
) -> torch.Tensor:
    """Zero-shot weights of shape [D, C] (columns unit-norm), like open_clip's ``build_zero_shot_classifier``."""
    if not classnames:
        raise UserError("no class names to build a zero-shot head for")
    prompts = render_prompts(classnames, templates)
    emb = encode_prompts(model, tokenizer, prompts, batch_size=batch_size, device=device, trim=trim)
    emb = emb.reshape(len(classnames), len(templates), -1).mean(dim=1)
    return F.normalize(emb, dim=-1).T.contiguous()


# --------------------------------------------------------------------------- head cache


def head_cache_key(model_id: str, classnames: Sequence[str], templates: Sequence[Template]) -> str:
    """Key over model + weights identity, the rendered templates and the class names."""
    # Callables (open_clip's lambdas) are keyed by what they render, which is what matters.
    rendered = [t if isinstance(t, str) else t("{}") for t in templates]
    blob = json.dumps({"model": model_id, "templates": rendered, "classes": list(classnames)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def cached_head(
    model: nn.Module,
    tokenizer: Callable[..., torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[Template],
    *,
    model_id: str,
    cache_dir: Path | None = None,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """:func:`build_head`, loaded from / saved to ``cache_dir`` (None disables the cache)."""
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / "heads" / f"{head_cache_key(model_id, classnames, templates)}.pt"
    return cached_tensor(path, lambda: build_head(model, tokenizer, classnames, templates, device=device),
                         device=device, what="zero-shot head")
