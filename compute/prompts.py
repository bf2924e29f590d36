"""Prompts: what a run asks of each image. ``[[prompts]]`` give a text and its label each; ``[[templates]]``
give a text holding ``{label}`` and the labels it is filled with (one prompt per label), or an ``ensemble``
of such texts (one prompt per label whose text embedding is the normalised mean of its texts' normalised
embeddings, as CLIP's prompt ensembles: compute.scoring.prompt_embeddings). Templates are expanded here,
once: a run stores, and its identity holds, the expanded prompts. Experiment files (compute.config) and
the prompts files of ``rescore`` are parsed by the same functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compute.errors import InputError
from compute.validation import MAX_PROMPTS, check_line, is_blank, no_unknown, read_toml, table_of


@dataclass
class Prompt:
    text: str  # what the store, the pages and the exports show; with an ensemble, a name for it
    label: str
    # The texts whose normalised mean embedding is this prompt's (CLIP's prompt ensembles); [] = ``text`` alone.
    ensemble: list[str] = field(default_factory=list)

    @property
    def texts(self) -> list[str]:
        """The texts the text tower embeds for this prompt (compute.scoring.prompt_embeddings)."""
        return list(self.ensemble) or [self.text]

    def identity(self) -> list:
        """The prompt in a run's identity: [text, label] as before ensembles existed (existing runs keep their
        identity), with the ensemble's texts third when there are some."""
        return [self.text, self.label, list(self.ensemble)] if self.ensemble else [self.text, self.label]

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "label": self.label, **({"ensemble": list(self.ensemble)} if self.ensemble else {})}


LABEL = "{label}"  # where a template takes its label


@dataclass
class Template:
    """``[[templates]]``: ``text`` (holding {label}) filled with each of ``labels``, one prompt per label; or
    an ``ensemble`` of such texts, one prompt per label averaging them."""

    labels: list[str]
    text: str = ""
    ensemble: list[str] = field(default_factory=list)


def parse_prompts(items: Any, where: str, templates: Any = None) -> list[Prompt]:
    """``[[prompts]]`` then ``[[templates]]`` expanded (in file order, labels in their order): text and label
    each, no duplicate texts, at least one."""
    items = items or []
    if not isinstance(items, list):
        raise InputError(f"'{where}' must be an array of tables: [[prompts]] text = ..., label = ...")
    if templates is not None and not isinstance(templates, list):
        raise InputError("'templates' must be an array of tables: [[templates]] text = \"a photo of a {label}\", "
                         "labels = [...]")
    if not items and not templates:
        raise InputError(f"no prompts: add [[prompts]] entries with text and label, or [[templates]] ({where})")
    if len(items) > MAX_PROMPTS:
        raise InputError(f"{len(items):,} prompts: a run holds at most {MAX_PROMPTS:,}")
    prompts = []
    for i, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise InputError(f"{where} #{i} must be a table with text and label")
        prompt = table_of(Prompt, item, f"{where} #{i}", required={"text", "label"})
        if is_blank(prompt.text) or is_blank(prompt.label):
            raise InputError(f"{where} #{i}: text and label must not be empty (nor only spaces or invisible "
                             f"characters)")
        prompt.text = check_line(prompt.text, f"{where} #{i}.text")
        prompt.label = check_line(prompt.label, f"{where} #{i}.label")
        prompt.ensemble = [check_line(t, f"{where} #{i}.ensemble") for t in prompt.ensemble]
        prompts.append(prompt)
    for i, item in enumerate(templates or [], start=1):
        prompts += expand_template(item, f"templates #{i}")
    if len(prompts) > MAX_PROMPTS:
        raise InputError(f"{len(prompts):,} prompts: a run holds at most {MAX_PROMPTS:,}")
    seen: set[str] = set()
    for prompt in prompts:
        if prompt.text in seen:
            raise InputError(f"duplicate prompt {prompt.text!r}: each prompt text may appear once")
        seen.add(prompt.text)
    return prompts


def ensemble_text(texts: list[str]) -> str:
    """The text an ensemble prompt is stored and shown as: its texts, joined."""
    return f"mean of {len(texts)}: " + " / ".join(texts)


def expand_template(item: Any, where: str) -> list[Prompt]:
    """One ``[[templates]]`` table -> its prompts, one per label: ``text`` with {label} replaced, or an
    ensemble of ``ensemble``'s texts (a single-text ensemble is that text)."""
    if not isinstance(item, dict):
        raise InputError(f"{where} must be a table with text (or ensemble) and labels")
    template = table_of(Template, item, where, required={"labels"})
    if bool(template.text) == bool(template.ensemble):
        raise InputError(f"[{where}] needs text = \"... {LABEL} ...\" or ensemble = [...] (one of the two)")
    texts = [check_line(t, f"[{where}] ensemble") for t in template.ensemble] or [check_line(template.text, f"[{where}] text")]
    for text in texts:
        if LABEL not in text:
            raise InputError(f"[{where}] template {text!r} does not hold {LABEL}")
    if not template.labels:
        raise InputError(f"[{where}] labels must list at least one non-empty label")
    labels = [check_line(label, f"[{where}] label") for label in template.labels]
    if len(labels) * len(texts) > MAX_PROMPTS:
        raise InputError(f"[{where}] expands to {len(labels) * len(texts):,} texts: at most {MAX_PROMPTS:,}")
    prompts = []
    for label in labels:
        filled = list(dict.fromkeys(text.replace(LABEL, label) for text in texts))
        if len(filled) == 1:
            prompts.append(Prompt(filled[0], label))
        else:
            prompts.append(Prompt(ensemble_text(filled), label, filled))
    return prompts


def load_prompts(path: str | Path) -> list[Prompt]:
    """A prompts file: ``[[prompts]]`` and ``[[templates]]`` entries (for rescore)."""
    path = Path(path)
    data = read_toml(path, "prompts")
    try:
        no_unknown(data, {"prompts", "templates"}, "top level")
        return parse_prompts(data.get("prompts"), "prompts", data.get("templates"))
    except InputError as e:
        raise InputError(f"{path}: {e}") from None
