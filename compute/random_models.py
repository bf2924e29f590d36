"""Randomly initialised CLIP models saved in the hub layout, for tests and ``make bench``.

They load through exactly the code path of ``openai/clip-vit-base-patch16`` (``from_pretrained`` on a
folder holding config, safetensors weights, image processor and tokenizer), so tests exercise the real
loading code without a network.
"""

from __future__ import annotations

from pathlib import Path

import torch

SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]
BASE_WORDS = (
    "a photo of the an on with and in small big dog cat bird car black white red green blue yellow "
    "circle square triangle cross star sink floor background shape"
).split()


def word_tokenizer(words: list[str], max_length: int = 32):
    """A word-level tokenizer that appends the end-of-text token CLIP pools at (see NOTES.md)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + sorted(set(words) - set(SPECIALS)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        model_max_length=max_length,
    )


def save_random_clip(
    out: str | Path,
    *,
    layers: int = 12,
    width: int = 32,
    heads: int = 4,
    mlp: int | None = None,
    image_size: int = 32,
    patch_size: int = 8,
    text_layers: int = 2,
    text_width: int = 32,
    text_heads: int | None = None,
    projection_dim: int = 16,
    extra_words: tuple[str, ...] = (),
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Build a CLIPModel with random weights and its CLIPProcessor; save both to ``out``."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    out = Path(out)
    tokenizer = word_tokenizer(BASE_WORDS + list(extra_words))
    vocab = tokenizer.get_vocab()
    config = CLIPConfig(
        text_config=dict(
            hidden_size=text_width, intermediate_size=4 * text_width, num_hidden_layers=text_layers,
            num_attention_heads=text_heads or max(1, text_width // 16), vocab_size=len(vocab), max_position_embeddings=32,
            bos_token_id=vocab["<bos>"], eos_token_id=vocab["<eos>"], pad_token_id=vocab["<pad>"],
        ),
        vision_config=dict(
            hidden_size=width, intermediate_size=mlp or 4 * width, num_hidden_layers=layers,
            num_attention_heads=heads, image_size=image_size, patch_size=patch_size,
        ),
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval().to(dtype)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    model.save_pretrained(out)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    return out
