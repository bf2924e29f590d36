"""New prompts scored against a run's stored image embeddings, in memory: what the Prompt lab shows (the
arithmetic of ``compute.rescore``, which its "Save as run" calls). Parsing the lab's lines, the logits of
every prompt under every ablation, accuracy per ablation, one image's rows shaped as the Image page's.

Only the vision tower is ablated, so a run's stored (image, ablation) embeddings and one text pass give the
logits of any prompt under every ablation at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from compute.config import Prompt, parse_prompts
from compute.errors import InputError
from compute.models import LoadedClip
from compute.rescore import load_embeddings, open_run, score_prompts


@dataclass(frozen=True)
class RunEmbeddings:
    model: str  # the run's CLIP reference
    dtype: str
    image_ids: list[int]
    labels: list[tuple[str, ...]]  # per image, as stored with the run
    ablations: list[str]
    embeddings: torch.Tensor  # (images, ablations, E) float32


def run_embeddings(db: Path, run: str) -> RunEmbeddings:
    """Every stored (image, ablation) embedding of ``run``; InputError when it kept none."""
    stored = open_run(Path(db), run)
    emb = load_embeddings(Path(db), stored, stored.image_ids)
    return RunEmbeddings(stored.exp.model.clip, stored.exp.model.dtype, stored.image_ids,
                         [stored.labels[i] for i in stored.image_ids], stored.ablations, emb)


def parse_lines(text: str) -> list[Prompt]:
    """``text | label`` per line (blank lines skipped) -> prompts, with the experiment file's checks."""
    items = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        prompt, sep, label = line.partition("|")
        if not sep:
            raise InputError(f"line {n}: write `text | label`, e.g. `a photo of a cat | cat`")
        items.append({"text": prompt.strip(), "label": label.strip()})
    return parse_prompts(items, "prompt lab")


@dataclass(frozen=True)
class PromptScores:
    prompts: tuple[tuple[str, str], ...]  # (text, label)
    logits: torch.Tensor  # (images, ablations, prompts)
    accuracy: pd.DataFrame  # per ablation: ablation, accuracy, change vs baseline


def accuracy(logits: torch.Tensor, image_labels: list[tuple[str, ...]], prompt_labels: list[str],
             ablations: list[str]) -> pd.DataFrame:
    """Per ablation (baseline first), the share of images whose selected prompt (the argmax of ``logits``,
    (images, ablations, prompts)) carries one of the image's labels, and its change against baseline."""
    picked = logits.argmax(dim=-1)  # (images, ablations)
    correct = torch.tensor([[prompt_labels[int(p)] in image_labels[i] for p in row] for i, row in enumerate(picked)],
                           dtype=torch.bool).reshape(picked.shape)
    acc = correct.float().mean(dim=0).numpy()  # (ablations,)
    return pd.DataFrame({"ablation": ablations, "accuracy": acc, "change": acc - acc[0]})


def score(clip: LoadedClip, emb: RunEmbeddings, prompts: tuple[tuple[str, str], ...]) -> PromptScores:
    """Logits of the prompts under every ablation, and accuracy per ablation."""
    logits = score_prompts(clip, emb.embeddings, [t for t, _ in prompts])
    return PromptScores(prompts, logits, accuracy(logits, emb.labels, [label for _, label in prompts], emb.ablations))


def image_frames(result: PromptScores, emb: RunEmbeddings, image_id: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One image's logits and selections, shaped as the Image page's queries (for charts.logit_heatmap)."""
    i = emb.image_ids.index(image_id)
    logits = result.logits[i]  # (ablations, prompts)
    probs = logits.softmax(dim=-1)
    rows = [{"ablation_id": a, "ablation": name, "prompt_id": p, "prompt": text, "label": label,
             "logit": float(logits[a, p]), "prob": float(probs[a, p])}
            for a, name in enumerate(emb.ablations) for p, (text, label) in enumerate(result.prompts)]
    picks = [{"ablation_id": a, "ablation": name, "selected_prompt": result.prompts[int(logits[a].argmax())][0]}
             for a, name in enumerate(emb.ablations)]
    return pd.DataFrame(rows), pd.DataFrame(picks)
