"""The Prompt lab's Streamlit side: the run's stored embeddings and CLIP's text tower held once per server,
the scores of a set of prompts and the check of their labels cached, and "Save as run". The arithmetic is
analysis.prompt_scores."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from analysis import prompt_scores
from analysis.prompt_scores import LabPrompt, PromptScores, RunEmbeddings
from compute.dataset import label_vocabulary
from compute.errors import InputError
from compute.models import LoadedClip, load_clip
from compute.rescore import rescore


@st.cache_resource(show_spinner="Loading the run's stored embeddings...", max_entries=2)
def run_embeddings(db: str, run: str, token: tuple) -> RunEmbeddings:
    """``token`` (the store's change token) reloads them when a running run adds images. A resource, not
    data: the tensor is shared, never pickled."""
    return prompt_scores.run_embeddings(Path(db), run)


@st.cache_resource(show_spinner="Loading CLIP...", max_entries=2)
def text_model(model: str, dtype: str) -> LoadedClip:
    return load_clip(model, "auto", dtype)


@st.cache_resource(show_spinner="Scoring...", max_entries=16)
def score(_clip: LoadedClip, _emb: RunEmbeddings, prompts: tuple[LabPrompt, ...], key: tuple = ()) -> PromptScores:
    """prompt_scores.score, cached per (``key``: store, run and its state; prompts)."""
    return prompt_scores.score(_clip, _emb, prompts)


@st.cache_resource(show_spinner="Reading the run's labels...", max_entries=2)
def _vocabulary(_emb: RunEmbeddings, key: tuple) -> tuple | None:
    """The run's dataset labels (compute.dataset.label_vocabulary), read once per run; None when its files
    cannot be read (prompt_scores.label_checks then says so)."""
    try:
        return label_vocabulary(_emb.dataset)
    except InputError:
        return None


@st.cache_data(show_spinner="Checking the labels...", max_entries=32)
def label_checks(_emb: RunEmbeddings, prompts: tuple[LabPrompt, ...], key: tuple = ()) -> tuple[list, list, str]:
    """prompt_scores.label_checks, cached per (``key``: store, run and its state; prompts), against the run's
    labels read once."""
    return prompt_scores.label_checks(_emb, prompts, _vocabulary(_emb, key))


def save(db: Path, run: str, prompts: tuple[LabPrompt, ...], name: str, clip: LoadedClip) -> int:
    """The lab's prompts as a run of the store (what `python -m compute rescore` makes)."""
    if not name or "/" in name:
        raise InputError("give the new run a name without '/'")
    return rescore(Path(db), run, [p.prompt() for p in prompts], name, progress=False, echo=lambda _: None,
                   clip=clip).run_id
