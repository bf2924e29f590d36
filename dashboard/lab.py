"""The Prompt lab's data side: a run's stored embeddings, CLIP's text tower, and new prompts scored
against them in memory (the arithmetic of ``compute.rescore``, which "Save as run" calls)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import streamlit as st
import torch

from compute.config import Prompt, parse_prompts
from compute.errors import InputError
from compute.models import LoadedClip, load_clip
from compute.rescore import load_embeddings, open_run, rescore, score_prompts


@dataclass(frozen=True)
class RunEmbeddings:
    model: str  # the run's CLIP reference
    dtype: str
    image_ids: list[int]
    labels: list[tuple[str, ...]]  # per image, as stored with the run
    ablations: list[str]
    embeddings: torch.Tensor  # (images, ablations, E) float32


@st.cache_resource(show_spinner="Loading the run's stored embeddings...", max_entries=2)
def run_embeddings(db: str, run: str, token: tuple) -> RunEmbeddings:
    """Every stored (image, ablation) embedding of ``run``; ``token`` (the store's change token) reloads
    them when a running run adds images. A resource, not data: the tensor is shared, never pickled."""
    stored = open_run(Path(db), run)
    emb = load_embeddings(Path(db), stored, stored.image_ids)
    return RunEmbeddings(stored.exp.model.clip, stored.exp.model.dtype, stored.image_ids,
                         [stored.labels[i] for i in stored.image_ids], stored.ablations, emb)


@st.cache_resource(show_spinner="Loading CLIP...", max_entries=2)
def text_model(model: str, dtype: str) -> LoadedClip:
    return load_clip(model, "auto", dtype)


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
class LabResult:
    prompts: tuple[tuple[str, str], ...]
    logits: torch.Tensor  # (images, ablations, prompts)
    accuracy: pd.DataFrame  # per ablation: ablation, accuracy, change vs baseline


@st.cache_resource(show_spinner="Scoring...", max_entries=16)
def score(_clip: LoadedClip, _emb: RunEmbeddings, prompts: tuple[tuple[str, str], ...], key: tuple = ()) -> LabResult:
    """Logits of the prompts under every ablation and accuracy per ablation. Cached per (run, prompts)."""
    logits = score_prompts(_clip, _emb.embeddings, [t for t, _ in prompts])
    picked = logits.argmax(dim=-1)  # (images, ablations)
    labels = [label for _, label in prompts]
    correct = torch.tensor([[labels[int(p)] in _emb.labels[i] for p in row] for i, row in enumerate(picked)])
    acc = correct.float().mean(dim=0).numpy()  # (ablations,)
    frame = pd.DataFrame({"ablation": _emb.ablations, "accuracy": acc, "change": acc - acc[0]})
    return LabResult(prompts, logits, frame)


def image_frames(result: LabResult, emb: RunEmbeddings, image_id: int) -> tuple[pd.DataFrame, pd.DataFrame]:
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


def save(db: Path, run: str, prompts: list[Prompt], name: str, clip: LoadedClip) -> int:
    """The lab's prompts as a run of the store (what `python -m compute rescore` makes)."""
    if not name or "/" in name:
        raise InputError("give the new run a name without '/'")
    return rescore(Path(db), run, prompts, name, progress=False, echo=lambda _: None, clip=clip).run_id
