"""Fixtures that tests and benches share: random models saved in the hub layout, small COCO-format
datasets of real JPEGs, and experiment files pointing at them.

The models load through exactly the code path of ``openai/clip-vit-base-patch16`` (``from_pretrained`` on
a folder holding config, safetensors weights, image processor and tokenizer), so tests exercise the real
loading code without a network; the datasets are read by pycocotools like COCO's own files. Besides
OpenAI's CLIP layout, an OpenCLIP-shaped CLIPModel (exact GELU); SigLIP and SigLIP 2 are in testing_siglip.
"""

from __future__ import annotations

import json
import random
from concurrent.futures import ProcessPoolExecutor
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


def save_openclip_shaped_clip(out: str | Path, **overrides) -> Path:
    """A small CLIPModel shaped as the OpenCLIP checkpoints published as CLIPModel (laion/CLIP-ViT-*): exact
    GELU instead of quick_gelu, and sizes unlike the other fixtures (6 layers of width 48 with 6 heads, 48 px,
    patch 16: 10 tokens; projection 24), perturbed so every bias and norm takes part."""
    kwargs = dict(layers=6, width=48, heads=6, mlp=96, image_size=48, patch_size=16, text_layers=2, text_width=48,
                  text_heads=3, projection_dim=24, hidden_act="gelu", perturb=0.05)
    return save_random_clip(out, **{**kwargs, **overrides})


def save_vit_b16_shaped_clip(out: str | Path) -> Path:
    """A random CLIP with the shapes of openai/clip-vit-base-patch16 (the bench's model, about 600 MB)."""
    return save_random_clip(out, layers=12, width=768, heads=12, mlp=3072, image_size=224, patch_size=16,
                            text_layers=12, text_width=512, text_heads=8, projection_dim=512)


# --------------------------------------------------------------------------------------------------
# COCO-format datasets and experiment files.

CATEGORIES = ["cat", "dog", "bird", "car"]
PROMPTS = [("a photo of a dog", "dog"), ("a photo of a cat", "cat"), ("a photo of a bird", "bird"),
           ("a photo of a car", "car")]


def photo_like(seed: int, i: int, width: int = 640, height: int = 480) -> Image.Image:
    """A random image that encodes and decodes like a photo: smooth colour fields at two scales plus grain.
    At 640 x 480 and JPEG quality 90 it takes about 150 KB, as COCO's photos do (random noise would take
    three times that, a plain colour almost nothing). Image ``i`` of ``seed`` is always the same."""
    rng = np.random.default_rng([seed, i])
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    mid = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    pixels = (np.asarray(coarse, np.int16) + np.asarray(mid, np.int16)) // 2
    pixels += rng.integers(-26, 27, pixels.shape, dtype=np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _save_photo(job: tuple[Path, int, int, int, int]) -> None:
    path, seed, i, width, height = job
    photo_like(seed, i, width, height).save(path, quality=90)


def make_coco(root: Path, n: int = 10, seed: int = 0, broken: tuple[int, ...] = (),
              size: tuple[int, int] = (40, 30), noise: bool = False, photo: bool = False,
              workers: int = 1) -> Path:
    """``n`` real JPEGs with COCO instances and captions files under ``root``.

    Image i is a cat when odd, a dog when even, both when a multiple of 5, and image 7 also holds a bird;
    its caption says "black cat" when i is a multiple of 3 (image 7 has a second one: "a bird on a black
    car"). Images are a plain colour with a few random pixels, or (``noise``) random pixels throughout,
    which are large and slow to decode, or (``photo``) like photos in size and decoding cost (see
    photo_like; made by ``workers`` processes).
    Image ids in ``broken`` get a corrupt file; an id listed in the JSON but absent is made by the caller.
    """
    rng = random.Random(seed)
    noise_rng = np.random.default_rng(seed)
    width, height = size
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    images, anns, caps, photos = [], [], [], []
    for i in range(1, n + 1):
        name = f"{i:012d}.jpg"
        path = root / "images" / name
        if photo and i not in broken:
            photos.append((path, seed, i, width, height))
        elif noise:
            im = Image.fromarray(noise_rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        else:
            im = Image.new("RGB", (width, height), tuple(rng.randrange(256) for _ in range(3)))
            for _ in range(20):
                im.putpixel((rng.randrange(width), rng.randrange(height)), tuple(rng.randrange(256) for _ in range(3)))
        if i in broken:
            path.write_bytes(b"not a jpeg at all")
        elif not photo:
            im.save(path, quality=90)
        images.append({"id": i, "file_name": name, "width": width, "height": height})
        cat_ids = [1 if i % 2 else 2] + ([2 if i % 2 else 1] if i % 5 == 0 else []) + ([3] if i == 7 else [])
        for c in cat_ids:
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c, "bbox": [1, 1, 10, 10],
                         "area": 100.0, "iscrowd": 0, "segmentation": [[1, 1, 11, 1, 11, 11, 1, 11]]})
        word = "black cat" if i % 3 == 0 else ("cat" if i % 2 else "dog")
        caps.append({"id": i, "image_id": i, "caption": f"a {word} sitting on a sink"})
        if i == 7:  # so "black car", a distractor label of the caption experiments, is a known label
            caps.append({"id": n + 1, "image_id": i, "caption": "a bird on a black car"})
    if workers > 1 and len(photos) > 1:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_save_photo, photos, chunksize=16))
    else:
        for job in photos:
            _save_photo(job)
    cats = [{"id": k + 1, "name": name, "supercategory": "thing"} for k, name in enumerate(CATEGORIES)]
    (root / "annotations" / "instances.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats}))
    (root / "annotations" / "captions.json").write_text(
        json.dumps({"images": images, "annotations": caps}))
    return root


def experiment_text(model: Path, coco: Path, db: Path, *, name: str = "t", sweep: str = "paper",
                    extra: tuple[str, ...] = (), prompts=PROMPTS, categories=("cat", "dog"),
                    batch_size: int = 4, captioner: Path | None = None, embeddings: str | None = None,
                    more: str = "", device: str = "cpu", dtype: str | None = None) -> str:
    """An experiment file over a make_coco dataset; ``more`` is appended as written (extra tables)."""
    lines = [
        f'name = "{name}"',
        "[model]",
        f'clip = "{model}"',
        f'device = "{device}"',
        *([f'dtype = "{dtype}"'] if dtype else []),
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
