"""Experiment files: one TOML file parsed into dataclasses.

Every key is declared below with its type and default; an unknown key at any level is an error naming it.
Relative paths resolve against the experiment file's folder. ``identity()`` is the part of the config that
defines a run's results (device, batch size and DB path do not): the store refuses to resume a run whose
identity changed.

Prompts come as ``[[prompts]]`` (a text and its label each) and ``[[templates]]`` (a text holding
``{label}`` and the labels it is filled with, one prompt per label; or an ``ensemble`` of such texts, one
prompt per label whose text embedding is the normalised mean of its texts' normalised embeddings, as
CLIP's prompt ensembles). Templates are expanded here, once: the run stores, and its identity holds, the
expanded prompts, so a template that expands to the prompts a file used to list is the same run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compute.ablations import SWEEPS, parse_ablation
from compute.errors import InputError
from compute.store import default_db
from compute.validation import (
    MAX_ABLATIONS,
    MAX_BATCH,
    MAX_BEAMS,
    MAX_IMAGES,
    MAX_NEW_TOKENS,
    MAX_PROMPTS,
    check_count,
    check_line,
    check_run_name,
    is_blank,
    read_text,
)

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("float32", "float16", "bfloat16")  # torch's names
DTYPE_CHOICES = ("auto", *DTYPES)  # model.dtype and --dtype: "auto" is resolved by compute.devices.resolve_dtype
EMBEDDING_DTYPES = ("float32", "float16", "none")
LABEL_SOURCES = ("categories", "captions")


@dataclass
class ModelConfig:
    clip: str = ""  # CLIP, SigLIP or SigLIP 2: hub id or local directory (save_pretrained layout); required
    captioner: str = "none"  # "none", or a hub id / local directory of a conditional captioner
    device: str = "auto"
    # float32 (exact), or auto / bfloat16 / float16: the sweep in low precision, every selection checked in
    # float32 (compute.precision; docs/precision.md)
    dtype: str = "float32"
    batch_size: int = 16
    # A prompt longer than the text tower's positions (77 tokens for CLIP) is an error; true cuts it there
    # instead. Not part of identity(): a run's results are the same either way once its prompts pass.
    truncate_prompts: bool = False


@dataclass
class DatasetConfig:
    images: Path = Path()  # folder of image files; required
    annotations: Path = Path()  # COCO instances JSON; required
    categories: list[str] = field(default_factory=list)  # keep images holding any of these ([] = all)
    captions: Path | None = None  # COCO captions JSON, for caption_contains and caption labels
    caption_contains: list[str] = field(default_factory=list)  # keep images whose captions say any of these
    labels: list[str] = field(default_factory=lambda: ["categories"])  # where image labels come from
    limit: int | None = None  # first N images by id


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


@dataclass
class AblationsConfig:
    # one of SWEEPS, or a list of them run in order, duplicates dropped (baseline is always run); a list
    # of one name is kept as that name, so both spellings are the same run
    sweep: str | list[str] = "paper"
    extra: list[str] = field(default_factory=list)


@dataclass
class StoreConfig:
    db: Path | None = None  # None: the default store (compute.store.default_db)
    embeddings: str = "float32"  # float32 | float16 | none: per (image, ablation) image embeddings kept


@dataclass
class CaptionsConfig:
    max_new_tokens: int = 20
    num_beams: int = 3
    batch_size: int = 16


@dataclass
class Experiment:
    name: str
    model: ModelConfig
    dataset: DatasetConfig
    prompts: list[Prompt]
    ablations: AblationsConfig
    store: StoreConfig
    captions: CaptionsConfig
    source: Path | None = None  # the TOML file it came from

    def identity(self) -> dict[str, Any]:
        """What the stored results depend on; compared when a run is resumed."""
        return {
            "clip": self.model.clip,
            "captioner": self.model.captioner,
            "dtype": self.model.dtype,
            "dataset": _jsonable(dataclasses.asdict(self.dataset)),
            "prompts": [p.identity() for p in self.prompts],
            "ablations": _jsonable(dataclasses.asdict(self.ablations)),
            "captions": _jsonable(dataclasses.asdict(self.captions)) if self.model.captioner != "none" else None,
            "embeddings": self.store.embeddings,
        }

    def identity_hash(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_json(self) -> str:
        """The resolved config, stored beside every run."""
        data = _jsonable(dataclasses.asdict(self))
        data["prompts"] = [p.to_dict() for p in self.prompts]  # expanded: templates are not kept
        return json.dumps(data, sort_keys=True)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return str(obj) if isinstance(obj, Path) else obj


# --------------------------------------------------------------------------------------------------
# Parsing.


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """The tables of a TOML file; InputError when it is missing, not UTF-8 or not TOML."""
    path = Path(path)
    text = read_text(path, what)
    try:
        return tomllib.loads(text)
    except ValueError as e:  # TOMLDecodeError, and integers of more than 4,300 digits
        raise InputError(f"{path}: not valid TOML ({str(e)[:200]})") from None


def load_experiment(path: str | Path) -> Experiment:
    """Read and check an experiment file. Raises InputError naming the file and its first problem."""
    path = Path(path)
    data = read_toml(path, "experiment")
    try:
        return parse_experiment(data, path.resolve().parent, source=path)
    except InputError as e:
        raise InputError(f"{path}: {e}") from None


def parse_experiment(data: dict[str, Any], base: Path, source: Path | None = None) -> Experiment:
    sections = {"name", "model", "dataset", "prompts", "templates", "ablations", "store", "captions"}
    _no_unknown(data, sections, "top level")
    name = data.get("name")
    if name is not None and not isinstance(name, str):
        raise InputError(f"name must be a string such as name = \"coco-cats-dogs\", got {name!r:.80}")
    if not isinstance(name, str) or not name.strip():
        raise InputError("'name' is required: a run name such as name = \"coco-cats-dogs\"")
    name = check_run_name(name, "name")

    model = _section(ModelConfig, data.get("model"), "model", required={"clip"})
    model.clip = resolve_model_ref(model.clip, base)
    if model.captioner != "none":
        model.captioner = resolve_model_ref(model.captioner, base)
    _choice(model.device, DEVICES, "model.device")
    _choice(model.dtype, DTYPE_CHOICES, "model.dtype")
    check_count(model.batch_size, "model.batch_size", MAX_BATCH, "images per batch")

    dataset_table = dict(data.get("dataset") or {})
    for key in ("categories", "caption_contains", "labels"):
        if isinstance(dataset_table.get(key), str):
            dataset_table[key] = [dataset_table[key]]
    dataset = _section(DatasetConfig, dataset_table, "dataset", required={"images", "annotations"})
    dataset.images = _resolve(base, dataset.images)
    dataset.annotations = _resolve(base, dataset.annotations)
    if dataset.captions is not None:
        dataset.captions = _resolve(base, dataset.captions)
    for source_name in dataset.labels:
        _choice(source_name, LABEL_SOURCES, "dataset.labels")
    if not dataset.labels:
        raise InputError("dataset.labels must name at least one of: categories, captions")
    if ("captions" in dataset.labels or dataset.caption_contains) and dataset.captions is None:
        raise InputError("dataset.captions (a COCO captions JSON) is needed for caption labels or caption_contains")
    if dataset.limit is not None:
        check_count(dataset.limit, "dataset.limit", MAX_IMAGES, "images in one run")

    prompts = parse_prompts(data.get("prompts"), "prompts", data.get("templates"))
    ablations = _section(AblationsConfig, data.get("ablations"), "ablations")
    ablations.sweep = _sweep_names(ablations.sweep)
    if len(ablations.extra) > MAX_ABLATIONS:
        raise InputError(f"ablations.extra lists {len(ablations.extra):,} ablations: at most {MAX_ABLATIONS:,}")
    ablations.extra = [parse_ablation(text).label for text in ablations.extra]  # syntax now, range later

    store = _section(StoreConfig, data.get("store"), "store")
    store.db = _resolve(base, store.db) if store.db is not None else default_db()
    _choice(store.embeddings, EMBEDDING_DTYPES, "store.embeddings")
    captions = _section(CaptionsConfig, data.get("captions"), "captions")
    check_count(captions.max_new_tokens, "captions.max_new_tokens", MAX_NEW_TOKENS, "tokens per caption")
    check_count(captions.num_beams, "captions.num_beams", MAX_BEAMS, "beams per caption")
    check_count(captions.batch_size, "captions.batch_size", MAX_BATCH, "images per batch")
    return Experiment(name, model, dataset, prompts, ablations, store, captions, source)


def _sweep_names(value: str | list[str]) -> str | list[str]:
    names = list(dict.fromkeys([value] if isinstance(value, str) else value))
    if not names:
        raise InputError("ablations.sweep must name a sweep (or \"none\" for baseline and the extras alone)")
    for name in names:
        _choice(name, SWEEPS, "ablations.sweep")
    return names[0] if len(names) == 1 else names


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
        prompt = _section(Prompt, item, f"{where} #{i}", required={"text", "label"})
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
    template = _section(Template, item, where, required={"labels"})
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
        _no_unknown(data, {"prompts", "templates"}, "top level")
        return parse_prompts(data.get("prompts"), "prompts", data.get("templates"))
    except InputError as e:
        raise InputError(f"{path}: {e}") from None


def resolve_model_ref(ref: str, base: Path) -> str:
    """A local directory (made absolute) or a hub id (kept as is).

    A reference is local when it starts like a path (./ ../ / ~) or names an existing folder relative to
    the experiment file; everything else ("openai/clip-vit-base-patch16") goes to the hub loader.
    """
    if ref.startswith(("./", "../", "/", "~")) or (base / ref).is_dir():
        return str(_resolve(base, Path(ref).expanduser()))
    return ref


def _resolve(base: Path, value: Path) -> Path:
    value = Path(value).expanduser()
    return value if value.is_absolute() else (base / value).resolve()


def _no_unknown(table: dict[str, Any], known: set[str], where: str) -> None:
    for key in table:
        if key not in known:
            raise InputError(f"unknown key {key!r} in {where} (known: {', '.join(sorted(known))})")


def _section(cls: type, table: Any, where: str, required: set[str] = frozenset()) -> Any:
    """Build dataclass ``cls`` from a TOML table, checking keys and value types."""
    if table is None:
        table = {}
    if not isinstance(table, dict):
        raise InputError(f"[{where}] must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _no_unknown(table, set(fields), f"[{where}]")
    for key in sorted(required):
        if key not in table:
            raise InputError(f"missing key {key!r} in [{where}]")
    values = {}
    for key, value in table.items():
        values[key] = _typed(value, fields[key].type, f"{where}.{key}")
    return cls(**values)


def _typed(value: Any, annotation: str, where: str) -> Any:
    # Annotations are strings (from __future__ import annotations); only a handful of types occur.
    base = annotation.replace(" | None", "")
    if base == "str":
        ok = isinstance(value, str)
    elif base == "bool":
        ok = isinstance(value, bool)
    elif base == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif base == "Path":
        ok = isinstance(value, str)
        value = Path(value) if ok else value
    elif base == "list[str]":
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    elif base == "str | list[str]":
        ok = isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
    else:  # pragma: no cover - a new field type needs a branch here
        raise TypeError(f"unsupported config type {annotation} for {where}")
    if not ok:
        raise InputError(f"{where} must be {base.replace('list[str]', 'a list of strings').replace(' | ', ' or ')}, "
                         f"got {value!r}")
    return value


def _choice(value: str, choices: tuple[str, ...], where: str) -> None:
    if value not in choices:
        raise InputError(f"{where} = {value!r} is not one of: {', '.join(choices)}")

