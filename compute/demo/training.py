"""What the demo's training scripts (and the random test models) share: a word-level tokenizer, the
optimiser's parameter groups and learning-rate schedule, and saving a model folder atomically."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

# ids 0..3. <eos> must not be id 2: CLIP's text tower reads eos_token_id == 2 as "legacy config" and pools
# at the largest token id instead of the end token.
SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")


def word_tokenizer(words: list[str], max_length: int, append_end: bool):
    """A ``PreTrainedTokenizerFast`` over ``words`` (lower-cased, split on white space; ids in the order
    given, after the specials). ``append_end``: every sequence is "<bos> words <eos>", which CLIP's text
    tower needs since it pools at the end token; a decoder's tokenizer has no post-processor, and with no
    ``decoders`` component ``decode`` joins tokens with single spaces."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate([*SPECIALS, *(w for w in dict.fromkeys(words) if w not in SPECIALS)])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if append_end:
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        model_max_length=max_length,
        model_input_names=["input_ids", "attention_mask"],  # CLIP takes no token_type_ids
    )


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # Weight decay on matrices only: biases, layer norms and scalars (CLIP's logit scale) stay free.
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * 0.5 * (1 + math.cos(math.pi * progress))


def training_cli(prog: str, description: str, default_steps: int, warmup: int,
                 argv: list[str] | None) -> argparse.Namespace | None:
    """``--out``, ``--steps``, ``--seed``, checked; None (after an ``error:`` line) on bad input."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--out", type=Path, required=True, help="output folder (replaced when training ends)")
    parser.add_argument("--steps", type=int, default=default_steps, help=f"optimiser steps (default {default_steps})")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    if args.steps <= warmup:
        print(f"error: --steps must be more than the {warmup} warm-up steps, got {args.steps}", file=sys.stderr)
        return None
    if args.out.exists() and not args.out.is_dir():
        print(f"error: {args.out} exists and is not a folder", file=sys.stderr)
        return None
    return args


def save_atomically(out: Path, build: Callable[[Path], dict]) -> dict:
    """Run ``build(folder)`` in a fresh folder beside ``out``, write its report there as
    training_report.json, then swap it in: an interrupted run leaves the old model intact."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    try:
        report = build(tmp)
        (tmp / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
        # mkdtemp makes a private folder; the shipped model is for everyone to read.
        tmp.chmod(0o755)
        for f in tmp.iterdir():
            f.chmod(0o644)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def folder_mib(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.iterdir()) / 2**20


def optimizer_step(opt: torch.optim.Optimizer, model: torch.nn.Module, loss: torch.Tensor, lr: float,
                   clip_norm: float) -> None:
    """Set the learning rate, backpropagate ``loss``, clip the gradient norm, step."""
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    opt.step()


class LossLog:
    """The mean loss over every 50 steps (and the first and last), for the report and the progress bar."""

    def __init__(self, steps: int, every: int = 50) -> None:
        self.steps, self.every = steps, every
        self.losses: dict[int, float] = {}
        self._running: list[float] = []

    def add(self, step: int, loss: float, bar) -> None:
        self._running.append(loss)
        if (step + 1) % self.every == 0 or step == 0 or step + 1 == self.steps:
            self.losses[step + 1] = round(float(np.mean(self._running)), 4)
            bar.set_postfix(loss=self.losses[step + 1])
            self._running = []
