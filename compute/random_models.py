"""Randomly initialised CLIP models saved in the hub layout, for tests and ``make bench``.

They load through exactly the code path of ``openai/clip-vit-base-patch16`` (``from_pretrained`` on a
folder holding config, safetensors weights, image processor and tokenizer), so tests exercise the real
loading code without a network.
"""

from __future__ import annotations

from pathlib import Path

import torch

from compute import training

BASE_WORDS = (
    "a photo of the an on with and in small big dog cat bird car black white red green blue yellow "
    "circle square triangle cross star sink floor background shape"
).split()


def word_tokenizer(words: list[str], max_length: int = 32):
    """A word-level tokenizer that appends the end-of-text token CLIP pools at (see NOTES.md)."""
    return training.word_tokenizer(sorted(set(words)), max_length, append_end=True)


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


def save_random_blip(out: str | Path, *, width: int = 32, image_size: int = 32, patch_size: int = 8,
                     extra_words: tuple[str, ...] = (), seed: int = 0) -> Path:
    """A tiny BlipForConditionalGeneration with a BERT word-piece tokenizer and BlipProcessor."""
    from transformers import (
        BertTokenizerFast,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    out = Path(out)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(BASE_WORDS + list(extra_words)))]
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(words)})
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})  # BLIP's decoder start token, as in the real model
    config = BlipConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=40, encoder_hidden_size=width,
            bos_token_id=tokenizer.bos_token_id, sep_token_id=tokenizer.sep_token_id,
            eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                           num_attention_heads=4, image_size=image_size, patch_size=patch_size),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    BlipForConditionalGeneration(config).eval().save_pretrained(out)
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": image_size, "width": image_size}),
                              tokenizer=tokenizer)
    processor.save_pretrained(out)
    return out


def save_random_vision_encoder_decoder(out: str | Path, *, width: int = 32, image_size: int = 32,
                                       patch_size: int = 8, extra_words: tuple[str, ...] = (),
                                       seed: int = 0) -> Path:
    """A tiny VisionEncoderDecoderModel (ViT encoder, GPT-2 decoder) with a word-level tokenizer."""
    from transformers import (
        GPT2Config,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessor,
    )

    out = Path(out)
    tokenizer = word_tokenizer(BASE_WORDS + list(extra_words))
    vocab = tokenizer.get_vocab()
    encoder = ViTConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2, num_attention_heads=4,
                        image_size=image_size, patch_size=patch_size)
    decoder = GPT2Config(vocab_size=len(vocab), n_embd=width, n_layer=2, n_head=4, n_positions=40,
                         add_cross_attention=True, is_decoder=True, bos_token_id=vocab["<bos>"],
                         eos_token_id=vocab["<eos>"], pad_token_id=vocab["<pad>"])
    config = VisionEncoderDecoderConfig(encoder=encoder.to_dict(), decoder=decoder.to_dict())
    config.decoder_start_token_id = vocab["<bos>"]
    config.pad_token_id = vocab["<pad>"]
    config.eos_token_id = vocab["<eos>"]
    torch.manual_seed(seed)
    model = VisionEncoderDecoderModel(config=config).eval()
    model.generation_config.decoder_start_token_id = vocab["<bos>"]
    model.generation_config.eos_token_id = vocab["<eos>"]
    model.generation_config.pad_token_id = vocab["<pad>"]
    model.save_pretrained(out)
    ViTImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
