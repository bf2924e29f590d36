"""Train the embedded demo's captioner on the synthetic shapes and save it in ``save_pretrained`` layout.

    python -m compute.demo.train_captioner --out data/demo/models/captioner [--steps 2500] [--seed 0]

A real ``transformers.VisionEncoderDecoderModel``: a ViT encoder (64 px, patch 16 = 17 tokens, 4 x 128)
and a GPT-2 decoder with cross-attention (3 x 128), a word-level tokenizer over the demo's words and a
``ViTImageProcessor``. It plays the study's captioner: given the caption CLIP picked ("a photo of a
red circle") it continues it for the image ("... on a blue background with a small green square").

Training images are rendered in memory by ``compute.demo.data``, fresh for every step, from a seed
stream the held-out val split never uses. The loss is teacher-forced cross-entropy on whole captions:
the dataset caption, the same caption with the colour left out (so shape-only prompts continue too),
and a few captions that start with a *wrong* object ("a photo of a green star" on a red circle), whose
loss covers only the continuation: the study feeds the captioner whatever CLIP picked, right or not.

The model is saved in fp16 (~3 MB), reloaded in fp32 through ``compute.models.load_captioner`` and
scored on the val split through ``compute.captions.continue_prefix``, the project's own path. Long because
a training script is read top to bottom: data, model, loss, evaluation and the report in one file.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tokenizers
import torch
import torch.nn.functional as F
import transformers
from tqdm import tqdm
from transformers import (
    GPT2Config,
    PreTrainedTokenizerFast,
    VisionEncoderDecoderConfig,
    VisionEncoderDecoderModel,
    ViTConfig,
    ViTImageProcessor,
)

from compute.demo import N_IMAGES, SEED, SPLIT
from compute.demo import data as demo_data
from compute.demo.data import COLOURS, PROMPT_TEMPLATE, SHAPES, ImageSpec
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
from compute.models import LoadedCaptioner, load_captioner

MAX_POSITIONS = 64  # longest caption is 15 words; room for a prefix plus max_new_tokens = 20 and more
IMAGE_MEAN = (0.5, 0.5, 0.5)  # ViT's own default normalisation
IMAGE_STD = (0.5, 0.5, 0.5)

BATCH = 64
LR = 1e-3
BETAS = (0.9, 0.98)
WEIGHT_DECAY = 0.05
WARMUP = 100
CLIP_NORM = 1.0
# Caption kinds drawn per training example (see the module docstring).
CAPTION_MIX = {"full": 0.6, "shape": 0.3, "wrong_prefix": 0.1}
# A wrong prefix names a random object; sometimes with words the vocabulary lacks (they become <unk>),
# as prompts written for other datasets would.
UNKNOWN_WORDS = ("dog", "cat", "car", "bird")
MAX_NEW_TOKENS, NUM_BEAMS = 20, 3  # CaptionsConfig's defaults: evaluate as the project generates
EVAL_BATCH = 64
BAR = 0.9  # background named right after the true short caption


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the demo's words. No post-processor: the decoder's start token comes
    from ``config.decoder_start_token_id`` (as ``continue_prefix`` builds it), the end token from training.
    With no ``decoders`` component, ``decode`` joins the tokens with single spaces, which is the caption."""
    return word_tokenizer(demo_data.vocabulary(), MAX_POSITIONS, append_end=False)


def build_image_processor() -> ViTImageProcessor:
    # 64 px in, 64 px out: the resize is a no-op on demo images, only rescale + normalise act.
    return ViTImageProcessor(
        do_resize=True,
        size={"height": demo_data.IMAGE_SIZE, "width": demo_data.IMAGE_SIZE},
        image_mean=list(IMAGE_MEAN),
        image_std=list(IMAGE_STD),
    )


def build_model(tokenizer: PreTrainedTokenizerFast) -> VisionEncoderDecoderModel:
    # No dropout anywhere: every step sees fresh images, so there is nothing to overfit.
    encoder = ViTConfig(
        image_size=demo_data.IMAGE_SIZE,
        # 16 px patches (17 tokens): the 10-14 px distractor sits whole inside its corner patch, and
        # training is ~2.5x faster than with 8 px patches (65 tokens) on two CPU cores.
        patch_size=16,
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=512,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    decoder = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=MAX_POSITIONS,
        n_embd=128,
        n_layer=3,
        n_head=4,
        n_inner=512,
        add_cross_attention=True,
        is_decoder=True,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    model = VisionEncoderDecoderModel(config=config)
    # generate() starts from decoder_start_token_id and stops at eos_token_id; GPT-2's defaults (50256)
    # would neither exist in this vocabulary nor stop anything.
    for cfg in (model.config, model.generation_config):
        cfg.decoder_start_token_id = tokenizer.bos_token_id
        cfg.bos_token_id = tokenizer.bos_token_id
        cfg.eos_token_id = tokenizer.eos_token_id
        cfg.pad_token_id = tokenizer.pad_token_id
    return model


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 images (batch, 64, 64, 3) -> float pixel_values (batch, 3, 64, 64), as the processor makes them."""
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (pixels.permute(0, 3, 1, 2).float() / 255 - mean) / std


def render_batch(specs: list[ImageSpec]) -> torch.Tensor:
    """(n, 64, 64, 3) uint8."""
    return torch.from_numpy(np.stack([np.asarray(demo_data.render(s)) for s in specs]))


# ---- training captions ----


def short_caption(spec: ImageSpec) -> str:
    """The prompt CLIP would pick when right: "a photo of a red circle"."""
    return PROMPT_TEMPLATE.format(spec.label)


def continuation(spec: ImageSpec) -> str:
    """What follows the object words: "on a blue background[ with a small green square]"."""
    text = f"on a {spec.background} background"
    if spec.distractor is not None:
        text += f" with a small {spec.distractor.colour} {spec.distractor.shape}"
    return text


@dataclass(frozen=True)
class Example:
    prefix: str  # "a photo of a red circle"
    rest: str  # "on a blue background ..."
    learn_prefix: bool  # False: the prefix is a wrong object; only the continuation is a target


def make_example(spec: ImageSpec, kind: str, rng: np.random.Generator) -> Example:
    if kind == "full":
        return Example(short_caption(spec), continuation(spec), True)
    if kind == "shape":
        return Example(PROMPT_TEMPLATE.format(spec.main.shape), continuation(spec), True)
    shape = str(rng.choice(UNKNOWN_WORDS)) if rng.random() < 0.15 else str(rng.choice(SHAPES))
    words = f"{rng.choice(list(COLOURS))} {shape}" if rng.random() < 0.7 else shape
    return Example(PROMPT_TEMPLATE.format(words), continuation(spec), False)


def encode(tokenizer: PreTrainedTokenizerFast, examples: list[Example]) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder inputs "<bos> w1 .. wn" and targets "w1 .. wn <eos>", right-padded; both (batch, n + 1).

    Targets are -100 on padding and on a wrong prefix's words (but not on the word after it)."""
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    prefixes = tokenizer([e.prefix for e in examples], add_special_tokens=False)["input_ids"]
    rests = tokenizer([e.rest for e in examples], add_special_tokens=False)["input_ids"]
    width = max(len(p) + len(r) for p, r in zip(prefixes, rests, strict=True)) + 1
    inputs = torch.full((len(examples), width), pad)
    targets = torch.full((len(examples), width), -100)
    for i, (e, p, r) in enumerate(zip(examples, prefixes, rests, strict=True)):
        words = [*p, *r]
        inputs[i, : len(words) + 1] = torch.tensor([bos, *words])
        targets[i, : len(words) + 1] = torch.tensor([*words, eos])
        if not e.learn_prefix:
            targets[i, : len(p)] = -100
    return inputs, targets


# ---- evaluation, through load_captioner + continue_prefix exactly as the project captions ----

_REST = re.compile(r"on a (\w+) background(?: with a small (\w+) (\w+))?")


def parse_continuation(text: str, prefix: str) -> dict[str, str | None] | None:
    """The parts of ``text`` after ``prefix``; None when it does not start with the prefix or does not
    follow the caption grammar "on a BG background[ with a small COLOUR SHAPE]"."""
    if not text.startswith(prefix + " "):
        return None
    m = _REST.fullmatch(text[len(prefix) + 1 :])
    if m is None:
        return None
    return {"background": m[1], "distractor": f"{m[2]} {m[3]}" if m[2] else None}


def wrong_prefix(spec: ImageSpec) -> str:
    """A prompt naming another colour and another shape: the next ones in the demo's fixed order."""
    colours, shapes = list(COLOURS), list(SHAPES)
    colour = colours[(colours.index(spec.main.colour) + 1) % len(colours)]
    shape = shapes[(shapes.index(spec.main.shape) + 1) % len(shapes)]
    return PROMPT_TEMPLATE.format(f"{colour} {shape}")


PREFIX_KINDS: dict[str, Callable[[ImageSpec], str]] = {
    "true_short": short_caption,  # what CLIP picks when right: the quality bar
    "shape_only": lambda s: PROMPT_TEMPLATE.format(s.main.shape),
    "wrong": wrong_prefix,
}


def generate_all(
    cap: LoadedCaptioner, specs: list[ImageSpec], prefix_of: Callable[[ImageSpec], str]
) -> list[tuple[str, str]]:
    """(prefix, caption) per spec; images grouped by prefix as the caption stage groups them."""
    from compute.captions import continue_prefix

    prefixes = [prefix_of(s) for s in specs]
    out: list[tuple[str, str] | None] = [None] * len(specs)
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prefixes):
        groups.setdefault(p, []).append(i)
    for p, idx in groups.items():
        for k in range(0, len(idx), EVAL_BATCH):
            chunk = idx[k : k + EVAL_BATCH]
            texts = continue_prefix(
                cap, [demo_data.render(specs[i]) for i in chunk], p, MAX_NEW_TOKENS, NUM_BEAMS
            )
            for i, t in zip(chunk, texts, strict=True):
                out[i] = (p, t)
    return out  # type: ignore[return-value]


def rates(specs: list[ImageSpec], results: list[tuple[str, str]]) -> dict[str, float]:
    """How often the continuation starts with the prefix, follows the grammar, names the background,
    names the distractor right (images with one) and invents one (images without)."""
    parsed = [parse_continuation(text, prefix) for prefix, text in results]
    with_d = [i for i, s in enumerate(specs) if s.distractor is not None]
    without_d = [i for i, s in enumerate(specs) if s.distractor is None]

    def mean(xs: list[bool]) -> float:
        return round(float(np.mean(xs)), 4) if xs else float("nan")

    return {
        "starts_with_prefix": mean([text.startswith(prefix) for prefix, text in results]),
        "grammatical": mean([p is not None for p in parsed]),
        "background": mean([p is not None and p["background"] == s.background for p, s in zip(parsed, specs, strict=True)]),
        "distractor_correct": mean([
            parsed[i] is not None and parsed[i]["distractor"] == f"{specs[i].distractor.colour} {specs[i].distractor.shape}"
            for i in with_d
        ]),
        "distractor_invented": mean([" with a small " in results[i][1] for i in without_d]),
    }  # fmt: skip


def evaluate(path: Path) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Rates per prefix kind on the val split, and a few example continuations, from the saved folder."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cap = load_captioner(str(path), device="cpu")
    specs = demo_data.sample_specs(demo_data.split_rng(SPLIT, SEED), N_IMAGES)
    metrics, by_kind = {}, {}
    for kind, prefix_of in PREFIX_KINDS.items():
        by_kind[kind] = generate_all(cap, specs, prefix_of)
        metrics[kind] = rates(specs, by_kind[kind])
    # From the bare template the captioner has to name the object too.
    bare = generate_all(cap, specs, lambda s: "a photo of a")
    metrics["bare"] = {
        "full_caption_exact": round(float(np.mean([t == demo_data.caption(s) for (_, t), s in zip(bare, specs, strict=True)])), 4),
    }  # fmt: skip
    examples = []
    for i in range(3):
        examples.append(f"[{demo_data.caption(specs[i])}] {by_kind['true_short'][i][1]}")
    for i in range(3, 5):
        examples.append(f"[{demo_data.caption(specs[i])}] {by_kind['wrong'][i][1]}")
    examples.append(f"[{demo_data.caption(specs[5])}] {by_kind['shape_only'][5][1]}")
    return metrics, examples


# ---- training ----


def train(out: Path, steps: int, seed: int) -> dict:
    torch.set_num_threads(2)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    t0 = time.time()

    tokenizer = build_tokenizer()
    image_processor = build_image_processor()
    model = build_model(tokenizer)
    n_params = sum(p.numel() for p in model.parameters())

    # "captioner-train" is a stream of its own: val (and the on-disk train split) never share it.
    train_rng = demo_data.split_rng("captioner-train", seed)
    check_specs = demo_data.sample_specs(np.random.default_rng([seed, 99]), 8)
    # Training pixels must be exactly what inference through the processor produces.
    check = image_processor([demo_data.render(s) for s in check_specs], return_tensors="pt")["pixel_values"]
    assert torch.allclose(check, normalise(render_batch(check_specs)), atol=1e-5), (
        "pixel pipeline differs from ViTImageProcessor"
    )

    opt = torch.optim.AdamW(param_groups(model, WEIGHT_DECAY), lr=LR, betas=BETAS)
    kinds, probs = list(CAPTION_MIX), list(CAPTION_MIX.values())
    log = LossLog(steps)
    model.train()
    bar = tqdm(range(steps), desc="training")
    for step in bar:
        specs = demo_data.sample_specs(train_rng, BATCH)  # fresh images every step
        pixel_values = normalise(render_batch(specs))  # (B, 3, 64, 64)
        examples = [
            make_example(s, k, rng)
            for s, k in zip(specs, rng.choice(kinds, size=BATCH, p=probs), strict=True)
        ]
        inputs, targets = encode(tokenizer, examples)  # (B, T) each
        # Right padding under causal attention: pads come after every real token and never reach it;
        # the mask only keeps transformers from warning about padded inputs.
        mask = (inputs != tokenizer.pad_token_id).long()  # (B, T)
        logits = model(
            pixel_values=pixel_values, decoder_input_ids=inputs, decoder_attention_mask=mask
        ).logits
        # logits: (B, T, vocab)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)

        optimizer_step(opt, model, loss, lr_at(step, steps, LR, WARMUP), CLIP_NORM)
        log.add(step, loss.item(), bar)
    bar.close()
    train_s = time.time() - t0

    # fp16 on disk (half the size); the project reloads it in fp32.
    model.eval()
    model.half().save_pretrained(out)
    image_processor.save_pretrained(out)
    tokenizer.save_pretrained(out)

    t1 = time.time()
    metrics, examples = evaluate(out)
    return {
        "steps": steps,
        "seed": seed,
        "batch": BATCH,
        "caption_mix": CAPTION_MIX,
        "parameters": n_params,
        "train_seconds": round(train_s, 1),
        "eval_seconds": round(time.time() - t1, 1),
        "seconds": round(time.time() - t0, 1),
        "final_loss": log.losses[steps],
        "losses": log.losses,
        "val": {"split": SPLIT, "n": N_IMAGES, "seed": SEED, "max_new_tokens": MAX_NEW_TOKENS,
                "num_beams": NUM_BEAMS, **metrics},
        "examples": examples,
        "bar": {"val.true_short.background": BAR},
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = training_cli("python -m compute.demo.train_captioner",
                        "Train the demo's captioner (ViT + GPT-2 VisionEncoderDecoderModel) on synthetic shapes "
                        "and save it (fp16, save_pretrained layout), then score it on the val split.",
                        default_steps=2500, warmup=WARMUP, argv=argv)
    if args is None:
        return 2
    report = save_atomically(args.out, lambda folder: train(folder, args.steps, args.seed))
    print(
        f"saved {args.out} ({folder_mib(args.out):.1f} MiB) after {report['steps']} steps in {report['seconds']:.0f} s; "
        f"final loss {report['final_loss']:.4f}"
    )
    val = report["val"]
    for kind in PREFIX_KINDS:
        print(f"val {kind:>10}: " + ", ".join(f"{k} {v:.3f}" for k, v in val[kind].items()))
    print(f"val       bare: full caption exact {val['bare']['full_caption_exact']:.3f}")
    print("examples ([true caption] continuation):")
    for e in report["examples"]:
        print(f"  {e}")
    ok = val["true_short"]["background"] >= BAR
    if not ok:
        print(f"warning: background rate after the true short caption is below the {BAR} bar")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
