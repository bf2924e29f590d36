"""New prompts scored against a run's stored image embeddings, in memory: what the Prompt lab shows (the
arithmetic of ``compute.rescore``, which its "Save as run" calls). Parsing the lab's lines (every bad line
reported, templates and ensembles as in experiment files), the logits of every prompt under every ablation,
accuracy per ablation against the run's own prompts (McNemar's paired test, Holm over the ablations), and
breakdowns per prompt and per template.

Only the vision tower is ablated, so a run's stored (image, ablation) embeddings and one text pass give the
logits of any prompt under every ablation at once.

A line is ``TEXT | LABEL``. ``TEXT`` may hold ``{label}`` (a template: one prompt per label of ``a, b, c``
after the bar, or with no bar one per label of the run's own prompts), and several texts separated by ``;``
make an ensemble (compute.config: one prompt per label, the normalised mean of its texts' embeddings).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from compute.config import DatasetConfig
from compute.dataset import prompt_label_problems
from compute.errors import InputError
from compute.models import LoadedClip
from compute.prompts import LABEL, Prompt, ensemble_text
from compute.rescore import load_embeddings, open_run, score_prompts
from compute.scoring import truth_matrix
from compute.significance import holm, mcnemar, verdict

SINGLE = "(single prompts)"  # the template group of lines that are one prompt each
ENSEMBLE_SEP = ";"


@dataclass(frozen=True)
class LabPrompt:
    """A prompt of the lab (hashable: the caches key on it)."""

    text: str  # as the store would keep it (an ensemble's: compute.config.ensemble_text)
    label: str
    texts: tuple[str, ...]  # what the text tower embeds (several: an ensemble)
    template: str  # the line's text when it holds {label}, else SINGLE

    def prompt(self) -> Prompt:
        return Prompt(self.text, self.label, list(self.texts) if len(self.texts) > 1 else [])


@dataclass(frozen=True)
class RunEmbeddings:
    model: str  # the run's CLIP reference
    dtype: str
    image_ids: list[int]
    labels: list[tuple[str, ...]]  # per image, as stored with the run
    ablations: list[str]
    embeddings: torch.Tensor  # (images, ablations, E) float32
    prompts: tuple[LabPrompt, ...]  # the run's own
    dataset: DatasetConfig  # the run's: where its labels come from


def run_embeddings(db: Path, run: str) -> RunEmbeddings:
    """Every stored (image, ablation) embedding of ``run``; InputError when it kept none."""
    stored = open_run(Path(db), run)
    emb = load_embeddings(Path(db), stored, stored.image_ids)
    own = tuple(LabPrompt(p.text, p.label, tuple(p.texts), SINGLE) for p in stored.exp.prompts)
    return RunEmbeddings(stored.exp.model.clip, stored.exp.model.dtype, stored.image_ids,
                         [stored.labels[i] for i in stored.image_ids], stored.ablations, emb, own,
                         stored.exp.dataset)


def run_lines(prompts: tuple[LabPrompt, ...]) -> str:
    """The lab's text for a set of prompts, one line each (an ensemble as its texts separated by ``;``)."""
    return "\n".join(f"{f'{ENSEMBLE_SEP} '.join(p.texts)} | {p.label}" for p in prompts)


@dataclass(frozen=True)
class Parsed:
    prompts: tuple[LabPrompt, ...]
    problems: tuple[str, ...]  # every bad line, "line N: ..."


def parse_lines(text: str, run_labels: list[str] | tuple[str, ...] = ()) -> Parsed:
    """The lab's lines -> prompts, and every problem (not only the first): a line without a bar that is no
    template, an empty text or label, a template without {label} in each of its texts, a prompt without
    {label} given several labels, a text that another line already asks. Blank lines and lines starting
    with # are skipped. ``run_labels``: what a template line without labels is filled with."""
    prompts: list[LabPrompt] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        body, bar, after = line.partition("|")
        texts = [t.strip() for t in body.split(ENSEMBLE_SEP)]
        labels = [x.strip() for x in after.split(",")] if bar else []
        templated = any(LABEL in t for t in texts)
        if not bar and not templated:
            problems.append(f"line {n}: write `text | label` (e.g. `a photo of a cat | cat`), or a template holding "
                            f"{LABEL} (`a drawing of a {LABEL}`: one prompt per label of the run)")
            continue
        if not all(texts):
            problems.append(f"line {n}: an empty text (before the bar, or between two `{ENSEMBLE_SEP}`)")
            continue
        if bar and not all(labels):
            problems.append(f"line {n}: an empty label after the bar")
            continue
        if templated and not all(LABEL in t for t in texts):
            problems.append(f"line {n}: every text of a template holds {LABEL}: "
                            + ", ".join(repr(t) for t in texts if LABEL not in t))
            continue
        if not templated and len(labels) > 1:
            problems.append(f"line {n}: a prompt without {LABEL} takes one label, not {len(labels)}")
            continue
        made = []
        for label in (labels or list(dict.fromkeys(run_labels))) if templated else labels:
            filled = tuple(dict.fromkeys(t.replace(LABEL, label) for t in texts))
            shown = filled[0] if len(filled) == 1 else ensemble_text(list(filled))
            made.append(LabPrompt(shown, label, filled, body.strip() if templated or len(texts) > 1 else SINGLE))
        for p in made:
            if p.text in seen:
                problems.append(f"line {n}: duplicate prompt {p.text!r} (line {seen[p.text]} asks it already)")
            else:
                seen[p.text] = n
                prompts.append(p)
    if not prompts and not problems:
        problems.append("no prompts: write one per line as `text | label`")
    return Parsed(tuple(prompts), tuple(problems))


def label_checks(emb: RunEmbeddings, prompts: tuple[LabPrompt, ...],
                 vocabulary: tuple[set[str], dict[int, list[str]]] | None = None) -> tuple[list[str], list[str], str]:
    """The CLI's check of prompt labels (compute.dataset.prompt_label_problems, every label at once):
    -> (errors: labels no image of the dataset could carry, with the closest known ones; warnings: known labels
    none of the run's images carries, as ``run`` warns, other than the run's own; a note when the dataset files could not be read and
    the labels were checked against those the run's images carry). ``vocabulary``: the dataset's
    (compute.dataset.label_vocabulary), when already read."""
    labels = list(dict.fromkeys(p.label for p in prompts))
    carried = {x for image in emb.labels for x in image}
    note = ""
    try:
        errors = prompt_label_problems(emb.dataset, labels, vocabulary)
    except InputError as e:  # a store opened where its dataset is not: check against what the store holds
        known = carried | {p.label for p in emb.prompts}
        errors = {}
        for label in labels:
            if label not in known:
                close = difflib.get_close_matches(label, sorted(known), n=3, cutoff=0.6)
                errors[label] = (f"prompt label {label!r} is carried by no image of the run"
                                 + (f"; closest known labels: {', '.join(repr(c) for c in close)}" if close else ""))
        note = f"The run's dataset files could not be read ({e}): labels were checked against those its images carry."
    # As `run` warns; the run's own labels were warned about when it ran (a distractor such as "car" among cats).
    own = {p.label for p in emb.prompts}
    uncarried = [label for label in labels if label not in carried and label not in errors and label not in own]
    warnings = [f"no image of the run carries the label(s) {', '.join(repr(x) for x in uncarried)}: their prompts "
                "can never be correct (fine for distractors)"] if uncarried else []
    return list(errors.values()), warnings, note


@dataclass(frozen=True)
class PromptScores:
    prompts: tuple[LabPrompt, ...]
    logits: torch.Tensor  # (images, ablations, prompts)
    correct: np.ndarray  # (images, ablations) bool: the selected prompt's label is one of the image's
    accuracy: pd.DataFrame  # per ablation: ablation, accuracy, change vs baseline


def _correct(logits: torch.Tensor, image_labels: list[tuple[str, ...]], prompt_labels: list[str]) -> np.ndarray:
    truth = truth_matrix(image_labels, prompt_labels)  # (images, prompts)
    picked = logits.argmax(dim=-1)  # (images, ablations)
    return truth.gather(1, picked).numpy()


def accuracy(logits: torch.Tensor, image_labels: list[tuple[str, ...]], prompt_labels: list[str],
             ablations: list[str]) -> pd.DataFrame:
    """Per ablation (baseline first), the share of images whose selected prompt (the argmax of ``logits``,
    (images, ablations, prompts)) carries one of the image's labels, and its change against baseline."""
    acc = _correct(logits, image_labels, prompt_labels).mean(axis=0)  # (ablations,)
    return pd.DataFrame({"ablation": ablations, "accuracy": acc, "change": acc - acc[0]})


def score(clip: LoadedClip, emb: RunEmbeddings, prompts: tuple[LabPrompt, ...]) -> PromptScores:
    """Logits of the prompts under every ablation, correctness and accuracy per ablation."""
    logits = score_prompts(clip, emb.embeddings, [list(p.texts) for p in prompts])
    labels = [p.label for p in prompts]
    return PromptScores(prompts, logits, _correct(logits, emb.labels, labels),
                        accuracy(logits, emb.labels, labels, emb.ablations))


def versus(lab: PromptScores, own: PromptScores, ablations: list[str]) -> pd.DataFrame:
    """The lab's prompts against the run's own, per ablation, paired on the images: accuracy of each, the
    change (lab minus run), McNemar's counts and test, Holm-adjusted over the ablations, and the verdict of
    the one rule (-1 the lab's prompts significantly worse, +1 better)."""
    a, b = own.correct, lab.correct  # (images, ablations)
    only_run, only_lab = (a & ~b).sum(axis=0), (b & ~a).sum(axis=0)
    tests = [mcnemar(x, y) for x, y in zip(only_run, only_lab, strict=True)]
    p = [t[1] for t in tests]
    p_holm = holm(p)
    change = b.mean(axis=0) - a.mean(axis=0)
    return pd.DataFrame({
        "ablation": ablations, "accuracy": b.mean(axis=0), "run_accuracy": a.mean(axis=0),
        "change_vs_run": change, "change": lab.accuracy["change"].to_numpy(),
        "only_run": only_run, "only_lab": only_lab, "method": [t[2] for t in tests], "p": p, "p_holm": p_holm,
        "verdict": [verdict(d, q) for d, q in zip(change, p_holm, strict=True)],
    })


def per_prompt(result: PromptScores, emb: RunEmbeddings, ablation: int) -> pd.DataFrame:
    """Under one ablation (its index): per prompt, how many images select it, the share of those it is right
    for, and the share of the images carrying its label that select it."""
    picked = result.logits[:, ablation].argmax(dim=-1).numpy()  # (images,)
    rows = []
    for k, p in enumerate(result.prompts):
        mine = picked == k
        carry = np.array([p.label in labels for labels in emb.labels])
        rows.append({"prompt": p.text, "label": p.label, "template": p.template, "selected": int(mine.sum()),
                     "right_when_selected": float(carry[mine].mean()) if mine.any() else np.nan,
                     "images_of_label": int(carry.sum()),
                     "recall": float(mine[carry].mean()) if carry.any() else np.nan})
    return pd.DataFrame(rows)


def per_template(result: PromptScores, emb: RunEmbeddings) -> pd.DataFrame:
    """Per template (a line of the lab that holds {label} or an ensemble; SINGLE for the other lines) and
    ablation: the accuracy of its prompts asked alone. Long form: template, ablation, prompts, accuracy."""
    groups = list(dict.fromkeys(p.template for p in result.prompts))
    rows = []
    for group in groups:
        keep = [k for k, p in enumerate(result.prompts) if p.template == group]
        correct = _correct(result.logits[:, :, keep], emb.labels, [result.prompts[k].label for k in keep])
        rows += [{"template": group, "ablation": a, "prompts": len(keep), "accuracy": float(x)}
                 for a, x in zip(emb.ablations, correct.mean(axis=0), strict=True)]
    return pd.DataFrame(rows)


def image_frames(result: PromptScores, emb: RunEmbeddings, image_id: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One image's logits and selections, shaped as the Image page's queries (for charts.logit_heatmap)."""
    i = emb.image_ids.index(image_id)
    logits = result.logits[i]  # (ablations, prompts)
    probs = logits.softmax(dim=-1)
    rows = [{"ablation_id": a, "ablation": name, "prompt_id": p, "prompt": prompt.text, "label": prompt.label,
             "logit": float(logits[a, p]), "prob": float(probs[a, p])}
            for a, name in enumerate(emb.ablations) for p, prompt in enumerate(result.prompts)]
    picks = [{"ablation_id": a, "ablation": name, "selected_prompt": result.prompts[int(logits[a].argmax())].text}
             for a, name in enumerate(emb.ablations)]
    return pd.DataFrame(rows), pd.DataFrame(picks)
