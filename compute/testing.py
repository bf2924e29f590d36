"""Fixtures that tests and benches share: random models saved in the hub layout, small COCO-format
datasets of real JPEGs, and experiment files pointing at them.

The models load through exactly the code path of ``openai/clip-vit-base-patch16`` (``from_pretrained`` on
a folder holding config, safetensors weights, image processor and tokenizer), so tests exercise the real
loading code without a network; the datasets are read by pycocotools like COCO's own files. Besides CLIP:
an OpenCLIP-shaped CLIPModel (exact GELU), SigLIP (``SiglipModel``, the layout of
``google/siglip-base-patch16-224`` and of SigLIP 2 FixRes) and SigLIP 2 NaFlex (``Siglip2Model``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from compute.demo import training

BASE_WORDS = (
    "a photo of the an on with and in small big dog cat bird car black white red green blue yellow "
    "circle square triangle cross star sink floor background shape"
).split()


def word_tokenizer(words: list[str], max_length: int = 32):
    """A word-level tokenizer that appends the end-of-text token CLIP pools at (see demo.training)."""
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
    hidden_act: str = "quick_gelu",
    perturb: float = 0.0,
) -> Path:
    """Build a CLIPModel with random weights and its CLIPProcessor; save both to ``out``.

    hidden_act: "quick_gelu" as OpenAI's CLIP, "gelu" as OpenCLIP checkpoints published as CLIPModel.
    perturb: noise added to every parameter (see randomize_), so biases and layer norms are not at their
    initial zeros and ones."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    out = Path(out)
    tokenizer = word_tokenizer(BASE_WORDS + list(extra_words))
    vocab = tokenizer.get_vocab()
    config = CLIPConfig(
        text_config=dict(
            hidden_size=text_width, intermediate_size=4 * text_width, num_hidden_layers=text_layers,
            num_attention_heads=text_heads or max(1, text_width // 16), vocab_size=len(vocab), max_position_embeddings=32,
            bos_token_id=vocab["<bos>"], eos_token_id=vocab["<eos>"], pad_token_id=vocab["<pad>"],
            hidden_act=hidden_act,
        ),
        vision_config=dict(
            hidden_size=width, intermediate_size=mlp or 4 * width, num_hidden_layers=layers,
            num_attention_heads=heads, image_size=image_size, patch_size=patch_size, hidden_act=hidden_act,
        ),
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    if perturb:
        randomize_(model, seed, perturb)
    model = model.to(dtype)
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


def randomize_(model: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """Add N(0, scale) noise to every parameter, in place. A fresh SigLIP leaves logit_scale, logit_bias,
    every bias and the layer norms at 0 and 1, where a missing bias term or a skipped norm goes unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * scale)
    return model


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


def save_openclip_shaped_clip(out: str | Path, **overrides) -> Path:
    """A small CLIPModel shaped as the OpenCLIP checkpoints published as CLIPModel (laion/CLIP-ViT-*): exact
    GELU instead of quick_gelu, and sizes unlike the other fixtures (6 layers of width 48 with 6 heads, 48 px,
    patch 16: 10 tokens; projection 24), perturbed so every bias and norm takes part."""
    kwargs = dict(layers=6, width=48, heads=6, mlp=96, image_size=48, patch_size=16, text_layers=2, text_width=48,
                  text_heads=3, projection_dim=24, hidden_act="gelu", perturb=0.05)
    return save_random_clip(out, **{**kwargs, **overrides})


def save_siglip_b16_shaped(out: str | Path) -> Path:
    """A random SigLIP with the vision tower of google/siglip-base-patch16-224 (12 layers, width 768, 12 heads,
    224 px, patch 16: 196 tokens, no CLS) and a 12-layer text tower padded to 64 tokens (the bench's model)."""
    return save_random_siglip(out, layers=12, width=768, heads=12, mlp=3072, image_size=224, patch_size=16,
                              text_layers=12, text_width=768, text_heads=12, text_length=64, perturb=0.0)


def save_vit_b16_shaped_clip(out: str | Path) -> Path:
    """A random CLIP with the shapes of openai/clip-vit-base-patch16 (the bench's model, about 600 MB)."""
    return save_random_clip(out, layers=12, width=768, heads=12, mlp=3072, image_size=224, patch_size=16,
                            text_layers=12, text_width=512, text_heads=8, projection_dim=512)


# --------------------------------------------------------------------------------------------------
# COCO-format datasets and experiment files.

CATEGORIES = ["cat", "dog", "bird", "car"]
PROMPTS = [("a photo of a dog", "dog"), ("a photo of a cat", "cat"), ("a photo of a bird", "bird"),
           ("a photo of a car", "car")]


def make_coco(root: Path, n: int = 10, seed: int = 0, broken: tuple[int, ...] = (),
              size: tuple[int, int] = (40, 30), noise: bool = False) -> Path:
    """``n`` real JPEGs with COCO instances and captions files under ``root``.

    Image i is a cat when odd, a dog when even, both when a multiple of 5, and image 7 also holds a bird;
    its caption says "black cat" when i is a multiple of 3. Images are a plain colour with a few random
    pixels, or (``noise``) random pixels throughout, which are large and slow to decode like photos.
    Image ids in ``broken`` get a corrupt file; an id listed in the JSON but absent is made by the caller.
    """
    rng = random.Random(seed)
    noise_rng = np.random.default_rng(seed)
    width, height = size
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    images, anns, caps = [], [], []
    for i in range(1, n + 1):
        name = f"{i:012d}.jpg"
        path = root / "images" / name
        if noise:
            im = Image.fromarray(noise_rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        else:
            im = Image.new("RGB", (width, height), tuple(rng.randrange(256) for _ in range(3)))
            for _ in range(20):
                im.putpixel((rng.randrange(width), rng.randrange(height)), tuple(rng.randrange(256) for _ in range(3)))
        if i in broken:
            path.write_bytes(b"not a jpeg at all")
        else:
            im.save(path, quality=90)
        images.append({"id": i, "file_name": name, "width": width, "height": height})
        cat_ids = [1 if i % 2 else 2] + ([2 if i % 2 else 1] if i % 5 == 0 else []) + ([3] if i == 7 else [])
        for c in cat_ids:
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c, "bbox": [1, 1, 10, 10],
                         "area": 100.0, "iscrowd": 0, "segmentation": [[1, 1, 11, 1, 11, 11, 1, 11]]})
        word = "black cat" if i % 3 == 0 else ("cat" if i % 2 else "dog")
        caps.append({"id": i, "image_id": i, "caption": f"a {word} sitting on a sink"})
    cats = [{"id": k + 1, "name": name, "supercategory": "thing"} for k, name in enumerate(CATEGORIES)]
    (root / "annotations" / "instances.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats}))
    (root / "annotations" / "captions.json").write_text(
        json.dumps({"images": images, "annotations": caps}))
    return root


def experiment_text(model: Path, coco: Path, db: Path, *, name: str = "t", sweep: str = "paper",
                    extra: tuple[str, ...] = (), prompts=PROMPTS, categories=("cat", "dog"),
                    batch_size: int = 4, captioner: Path | None = None, embeddings: str | None = None,
                    more: str = "") -> str:
    """An experiment file over a make_coco dataset; ``more`` is appended as written (extra tables)."""
    lines = [
        f'name = "{name}"',
        "[model]",
        f'clip = "{model}"',
        'device = "cpu"',
        f"batch_size = {batch_size}",
        *([f'captioner = "{captioner}"'] if captioner else []),
        "[dataset]",
        f'images = "{coco / "images"}"',
        f'annotations = "{coco / "annotations" / "instances.json"}"',
        f"categories = {json.dumps(list(categories))}",
        "[ablations]",
        f'sweep = "{sweep}"',
        f"extra = {json.dumps(list(extra))}",
        "[store]",
        f'db = "{db}"',
        *([f'embeddings = "{embeddings}"'] if embeddings else []),
    ]
    for text, label in prompts:
        lines += ["[[prompts]]", f'text = "{text}"', f'label = "{label}"']
    return "\n".join(lines) + "\n" + more


def write_experiment(path: Path, *args, **kwargs) -> Path:
    """experiment_text(*args, **kwargs) written to ``path``."""
    path.write_text(experiment_text(*args, **kwargs))
    return path
