"""Random SigLIP (``SiglipModel``: the layout of ``google/siglip-base-patch16-224`` and of the SigLIP 2 FixRes
checkpoints) and SigLIP 2 NaFlex (``Siglip2Model``) models with their processors, saved in the hub layout for
tests and benches (tools.synthetic has CLIP's and the COCO fixtures).

A fresh SigLIP leaves logit_scale, logit_bias, every bias and the layer norms at 0 and 1, where a forgotten
bias term or a skipped norm goes unnoticed: these are perturbed (tools.synthetic.randomize_), and the logit
scale and bias set to realistic signs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tools.synthetic import BASE_WORDS, randomize_


def siglip_word_tokenizer(words: list[str], max_length: int):
    """A word-level tokenizer laid out as SigLIP's own: lower-cased, "</s>" appended, padded on the right with
    "</s>", and returning input_ids only (the real tokenizer_config's model_input_names), as SigLIP was
    trained (its text tower pools at the last position)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", *sorted(set(words))])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="</s>", unk_token="<unk>",
                                   model_max_length=max_length, model_input_names=["input_ids"],
                                   padding_side="right")


def siglip2_bpe_tokenizer(words: list[str]):
    """A Siglip2Tokenizer (Gemma-style BPE over letters, with merges that spell ``words``): a siglip2 folder
    reloads its tokenizer as this class, so a word-level one would come back as unknown tokens."""
    from transformers import Siglip2Tokenizer

    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "▁",
                                         *(chr(c) for c in range(ord("a"), ord("z") + 1))])}
    merges = []
    for word in sorted(set(words)):
        text = "▁" + word.lower()
        cur = text[0]
        for ch in text[1:]:
            if ch not in vocab:
                continue
            if cur + ch not in vocab:
                vocab[cur + ch] = len(vocab)
                merges.append((cur, ch))
            cur += ch
    return Siglip2Tokenizer(vocab=vocab, merges=merges)


def _siglip_configs(layers: int, width: int, heads: int, mlp: int | None, text_layers: int, text_width: int,
                    text_heads: int | None, vocab: int, text_length: int) -> tuple[dict, dict]:
    text = dict(hidden_size=text_width, intermediate_size=4 * text_width, num_hidden_layers=text_layers,
                num_attention_heads=text_heads or max(1, text_width // 16), vocab_size=vocab,
                max_position_embeddings=text_length, projection_size=width)
    vision = dict(hidden_size=width, intermediate_size=mlp or 4 * width, num_hidden_layers=layers,
                  num_attention_heads=heads)
    return text, vision


def _finish_siglip(model: torch.nn.Module, seed: int, perturb: float) -> torch.nn.Module:
    # Realistic signs: a positive temperature and a negative bias (SigLIP-B/16: exp 117, bias -12.9), so the
    # bias term is far from zero and a logit that forgot it is caught.
    if perturb:
        randomize_(model, seed, perturb)
    with torch.no_grad():
        model.logit_scale.fill_(2.3)
        model.logit_bias.fill_(-1.7)
    return model.eval()


def save_random_siglip(out: str | Path, *, layers: int = 6, width: int = 32, heads: int = 4, mlp: int | None = None,
                       image_size: int = 32, patch_size: int = 8, text_layers: int = 2, text_width: int = 32,
                       text_heads: int | None = None, text_length: int = 16, extra_words: tuple[str, ...] = (),
                       seed: int = 0, perturb: float = 0.2) -> Path:
    """A SiglipModel with random (perturbed) weights and its SiglipProcessor, saved to ``out``: model_type
    "siglip", as google/siglip-base-patch16-224 and the SigLIP 2 FixRes checkpoints."""
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor

    out = Path(out)
    tokenizer = siglip_word_tokenizer(BASE_WORDS + list(extra_words), text_length)
    vocab = tokenizer.get_vocab()
    text, vision = _siglip_configs(layers, width, heads, mlp, text_layers, text_width, text_heads, len(vocab),
                                   text_length)
    text.update(pad_token_id=vocab["</s>"], eos_token_id=vocab["</s>"], bos_token_id=None)
    vision.update(image_size=image_size, patch_size=patch_size)
    torch.manual_seed(seed)
    model = _finish_siglip(SiglipModel(SiglipConfig(text_config=text, vision_config=vision)), seed, perturb)
    image_processor = SiglipImageProcessor(size={"height": image_size, "width": image_size})
    model.save_pretrained(out)
    SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    return out


def save_random_siglip2(out: str | Path, *, layers: int = 6, width: int = 32, heads: int = 4, mlp: int | None = None,
                        grid: int = 4, patch_size: int = 8, text_layers: int = 2, text_width: int = 32,
                        text_heads: int | None = None, text_length: int = 64, extra_words: tuple[str, ...] = (),
                        seed: int = 0, perturb: float = 0.2) -> Path:
    """A Siglip2Model (NaFlex, model_type "siglip2") with random (perturbed) weights and its Siglip2Processor,
    saved to ``out``; its native grid is ``grid`` x ``grid`` patches of ``patch_size`` pixels."""
    from transformers import Siglip2Config, Siglip2ImageProcessor, Siglip2Model, Siglip2Processor

    out = Path(out)
    tokenizer = siglip2_bpe_tokenizer(BASE_WORDS + list(extra_words))
    text, vision = _siglip_configs(layers, width, heads, mlp, text_layers, text_width, text_heads, len(tokenizer),
                                   text_length)
    text.update(pad_token_id=0, eos_token_id=1, bos_token_id=2)
    vision.update(patch_size=patch_size, num_patches=grid * grid)
    torch.manual_seed(seed)
    model = _finish_siglip(Siglip2Model(Siglip2Config(text_config=text, vision_config=vision)), seed, perturb)
    image_processor = Siglip2ImageProcessor(patch_size=patch_size, max_num_patches=grid * grid)
    model.save_pretrained(out)
    Siglip2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    return out


def save_siglip_b16_shaped(out: str | Path) -> Path:
    """A random SigLIP with the vision tower of google/siglip-base-patch16-224 (12 layers, width 768, 12 heads,
    224 px, patch 16: 196 tokens, no CLS) and a 12-layer text tower padded to 64 tokens (the bench's model)."""
    return save_random_siglip(out, layers=12, width=768, heads=12, mlp=3072, image_size=224, patch_size=16,
                              text_layers=12, text_width=768, text_heads=12, text_length=64, perturb=0.0)
