"""Train the embedded demo's toy CLIP on the synthetic shapes and save it in ``save_pretrained`` layout.

    python -m compute.demo.train_clip --out data/demo/models/clip [--steps 1000] [--seed 0]

A real ``transformers.CLIPModel`` (vision 12 x 64, patch 16 on 64 px images = 17 tokens; text 4 x 128;
projection 64), a word-level tokenizer over the demo's words, and a ``CLIPImageProcessor``. The
training images are rendered in memory by ``compute.demo.data`` with a seed stream the held-out
val split never uses. The loss is a multi-positive contrastive loss: a caption is a positive
for every image in the batch it is true of (the standard one-hot CLIP loss punishes the many
true duplicates in a batch of 128 drawn from a few dozen captions, and learns far slower).

The model is saved in fp16 (~3 MB), reloaded in fp32 through ``from_pretrained`` and scored on
the val split the way the project scores it (processor -> ``logits_per_image`` -> argmax).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tokenizers
import torch
import torch.nn.functional as F
import transformers
from PIL import Image
from tqdm import tqdm
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, PreTrainedTokenizerFast

from compute.demo import N_IMAGES, SEED, SPLIT
from compute.demo import data as demo_data
from compute.demo.data import PROMPT_TEMPLATE, SHAPES, ImageSpec
from compute.demo.training import (
    LossLog,
    folder_mib,
    lr_at,
    optimizer_step,
    param_groups,
    save_atomically,
    training_cli,
    word_tokenizer,
)
from compute.models import load_clip

MAX_TOKENS = 32
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

N_TRAIN = 30_000
BATCH = 128
LR = 2e-3
BETAS = (0.9, 0.98)
WEIGHT_DECAY = 0.05
WARMUP = 100
CLIP_NORM = 1.0
SHAPE_ONLY_WEIGHT = 0.3  # image->text target weight of a true shape-only caption (full captions: 1)
# Caption kinds drawn per training example. "full" is the dataset caption (background and
# distractor too), so that generated captions later get meaningful scores.
CAPTION_MIX = {"colour_shape": 0.55, "shape": 0.30, "full": 0.15}
BAR = 0.95


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the demo's words; every sequence is "<bos> words <eos>"."""
    return word_tokenizer(demo_data.vocabulary(), MAX_TOKENS, append_end=True)


def build_image_processor() -> CLIPImageProcessor:
    # 64 px in, 64 px out: resize and crop are no-ops, only rescale + normalise act.
    return CLIPImageProcessor(
        size={"shortest_edge": demo_data.IMAGE_SIZE},
        crop_size={"height": demo_data.IMAGE_SIZE, "width": demo_data.IMAGE_SIZE},
        do_center_crop=True,
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
    )


def build_model(tokenizer: PreTrainedTokenizerFast) -> CLIPModel:
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        projection_dim=64,
    )
    vision = dict(
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=12,
        num_attention_heads=4,
        image_size=demo_data.IMAGE_SIZE,
        patch_size=16,
        projection_dim=64,
    )
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=64))


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 images (batch, 64, 64, 3) -> float pixel_values (batch, 3, 64, 64), as the processor makes them."""
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    return (pixels.permute(0, 3, 1, 2).float() / 255 - mean) / std


# ---- captions as claims: a caption is true of an image when every claim it makes holds ----


@dataclass(frozen=True)
class Claim:
    shape: str
    colour: str | None = None
    background: str | None = None
    distractor: str | None = None  # "green square"; None: says nothing about a distractor

    def text(self) -> str:
        words = f"{self.colour} {self.shape}" if self.colour else self.shape
        if self.background:
            words += f" on a {self.background} background"
        if self.distractor:
            words += f" with a small {self.distractor}"
        return PROMPT_TEMPLATE.format(words)


def claim_for(spec: ImageSpec, kind: str) -> Claim:
    if kind == "shape":
        return Claim(spec.main.shape)
    if kind == "colour_shape":
        return Claim(spec.main.shape, spec.main.colour)
    d = spec.distractor
    return Claim(spec.main.shape, spec.main.colour, spec.background, f"{d.colour} {d.shape}" if d else None)


def is_true(claim: Claim, spec: ImageSpec) -> bool:
    d = spec.distractor
    return (
        claim.shape == spec.main.shape
        and claim.colour in (None, spec.main.colour)
        and claim.background in (None, spec.background)
        and (claim.distractor is None or (d is not None and claim.distractor == f"{d.colour} {d.shape}"))
    )


def soft_targets(specs: list[ImageSpec], claims: list[Claim]) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-normalised image->text and text->image targets, both (batch_images, batch_texts)."""
    truth = torch.tensor([[is_true(c, s) for c in claims] for s in specs], dtype=torch.float32)  # (B, B)
    weight = torch.tensor([SHAPE_ONLY_WEIGHT if c.colour is None else 1.0 for c in claims])  # (B,)
    i2t = truth * weight
    i2t = i2t / i2t.sum(1, keepdim=True)  # the diagonal is always true, so no row is empty
    t2i = truth / truth.sum(0, keepdim=True)  # (B images, B texts), columns sum to 1
    return i2t, t2i


def contrastive_loss(logits: torch.Tensor, i2t: torch.Tensor, t2i: torch.Tensor) -> torch.Tensor:
    """Soft-target cross-entropy both ways; logits (images, texts)."""
    loss_i = -(i2t * F.log_softmax(logits, dim=1)).sum(1).mean()
    loss_t = -(t2i * F.log_softmax(logits, dim=0)).sum(0).mean()
    return (loss_i + loss_t) / 2


# ---- evaluation, through the processor exactly as the project scores ----


@torch.no_grad()
def predict(
    model: CLIPModel, processor: CLIPProcessor, images: list[Image.Image], prompts: list[str]
) -> np.ndarray:
    """Index of the argmax prompt per image, (n_images,)."""
    text = processor.tokenizer(prompts, padding=True, return_tensors="pt")
    text_emb = model.get_text_features(**text).pooler_output  # (prompts, proj)
    text_emb = text_emb / text_emb.norm(dim=-1, keepdim=True)
    picks = []
    for i in range(0, len(images), 100):
        pixel_values = processor.image_processor(images[i : i + 100], return_tensors="pt")["pixel_values"]
        img_emb = model.get_image_features(pixel_values=pixel_values).pooler_output  # (batch, proj)
        img_emb = img_emb / img_emb.norm(dim=-1, keepdim=True)
        picks.append((img_emb @ text_emb.T).argmax(1).numpy())  # the logit scale does not move the argmax
    return np.concatenate(picks)


def shape_prompts() -> list[str]:
    return [PROMPT_TEMPLATE.format(s) for s in SHAPES]


def attribute_prompts() -> list[str]:
    return shape_prompts() + [PROMPT_TEMPLATE.format(a) for a in demo_data.attribute_names()]


def evaluate(model: CLIPModel, processor: CLIPProcessor, specs: list[ImageSpec]) -> dict[str, float]:
    """Shape accuracy (5 shape prompts) and attribute accuracy (5 shape + 30 colour-shape prompts)."""
    images = [demo_data.render(s) for s in specs]
    shape_p = shape_prompts()
    picks = predict(model, processor, images, shape_p)
    shape_acc = float(
        np.mean(
            [shape_p[k] == PROMPT_TEMPLATE.format(s.main.shape) for k, s in zip(picks, specs, strict=True)]
        )
    )
    attr_p = attribute_prompts()
    picks = predict(model, processor, images, attr_p)
    attr_acc = float(
        np.mean([attr_p[k] == PROMPT_TEMPLATE.format(s.label) for k, s in zip(picks, specs, strict=True)])
    )
    return {"shape_accuracy": shape_acc, "attribute_accuracy": attr_acc}


def load(path: Path) -> tuple[CLIPModel, CLIPProcessor]:
    """Reload a saved demo model exactly as the project does (compute.models.load_clip: fp32)."""
    clip = load_clip(str(path), "cpu")
    return clip.model, clip.processor


# ---- training ----


def render_all(specs: list[ImageSpec]) -> torch.Tensor:
    """(n, 64, 64, 3) uint8; kept as uint8 (370 MB for 30k) and normalised per batch."""
    out = np.empty((len(specs), demo_data.IMAGE_SIZE, demo_data.IMAGE_SIZE, 3), dtype=np.uint8)
    for i, s in enumerate(tqdm(specs, desc="rendering", leave=False)):
        out[i] = np.asarray(demo_data.render(s))
    return torch.from_numpy(out)


def train(out: Path, steps: int, seed: int) -> dict:
    torch.set_num_threads(2)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    t0 = time.time()

    tokenizer = build_tokenizer()
    image_processor = build_image_processor()
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model = build_model(tokenizer)
    n_params = sum(p.numel() for p in model.parameters())

    # "clip-train" is a stream of its own: val (and the on-disk train split) never share it.
    specs = demo_data.sample_specs(demo_data.split_rng("clip-train", seed), N_TRAIN)
    pixels = render_all(specs)  # (N, 64, 64, 3) uint8
    # Training pixels must be exactly what inference through the processor produces.
    check = image_processor([demo_data.render(s) for s in specs[:8]], return_tensors="pt")["pixel_values"]
    assert torch.allclose(check, normalise(pixels[:8]), atol=1e-5), (
        "pixel pipeline differs from CLIPImageProcessor"
    )
    render_s = time.time() - t0

    opt = torch.optim.AdamW(param_groups(model, WEIGHT_DECAY), lr=LR, betas=BETAS)
    kinds, probs = list(CAPTION_MIX), list(CAPTION_MIX.values())
    log = LossLog(steps)
    order = rng.permutation(N_TRAIN)
    pos = 0
    model.train()
    bar = tqdm(range(steps), desc="training")
    for step in bar:
        if pos + BATCH > N_TRAIN:
            order, pos = rng.permutation(N_TRAIN), 0
        idx = order[pos : pos + BATCH]
        pos += BATCH
        batch_specs = [specs[i] for i in idx]
        claims = [
            claim_for(s, k) for s, k in zip(batch_specs, rng.choice(kinds, size=BATCH, p=probs), strict=True)
        ]
        text = tokenizer([c.text() for c in claims], padding=True, return_tensors="pt")
        i2t, t2i = soft_targets(batch_specs, claims)

        img = model.get_image_features(pixel_values=normalise(pixels[idx])).pooler_output  # (B, proj)
        txt = model.get_text_features(**text).pooler_output  # (B, proj)
        img = img / img.norm(dim=-1, keepdim=True)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        logits = model.logit_scale.exp() * img @ txt.T  # (B images, B texts)
        loss = contrastive_loss(logits, i2t, t2i)

        optimizer_step(opt, model, loss, lr_at(step, steps, LR, WARMUP), CLIP_NORM)
        log.add(step, loss.item(), bar)
    train_s = time.time() - t0 - render_s

    # fp16 on disk (half the size); the project reloads it in fp32.
    model.eval()
    model.half().save_pretrained(out)
    processor.save_pretrained(out)

    reloaded, reloaded_processor = load(out)
    val_specs = demo_data.sample_specs(
        demo_data.split_rng(SPLIT, SEED), N_IMAGES
    )  # = write_coco(.., "val", 600, 0)
    metrics = evaluate(reloaded, reloaded_processor, val_specs)
    return {
        "steps": steps,
        "seed": seed,
        "n_train_images": N_TRAIN,
        "batch": BATCH,
        "caption_mix": CAPTION_MIX,
        "parameters": n_params,
        "render_seconds": round(render_s, 1),
        "train_seconds": round(train_s, 1),
        "seconds": round(time.time() - t0, 1),
        "losses": log.losses,
        "val": {"split": SPLIT, "n": N_IMAGES, "seed": SEED, **metrics},
        "bar": BAR,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    args = training_cli("python -m compute.demo.train_clip",
                        "Train the demo's toy CLIP on synthetic shapes and save it (fp16, save_pretrained layout).",
                        default_steps=1000, warmup=WARMUP, argv=argv)
    if args is None:
        return 2
    report = save_atomically(args.out, lambda folder: train(folder, args.steps, args.seed))
    val = report["val"]
    print(
        f"saved {args.out} ({folder_mib(args.out):.1f} MiB) after {report['steps']} steps in {report['seconds']:.0f} s; "
        f"val shape accuracy {val['shape_accuracy']:.3f}, attribute accuracy {val['attribute_accuracy']:.3f}"
    )
    ok = val["shape_accuracy"] >= BAR and val["attribute_accuracy"] >= BAR
    if not ok:
        print(f"warning: below the {BAR} bar")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
