"""Experiment files: one TOML file parsed into dataclasses.

Every key is declared below with its type and default; an unknown key at any level is an error naming it.
Relative paths resolve against the experiment file's folder. ``identity()`` is the part of the config that
defines a run's results (device, batch size and DB path do not): the store refuses to resume a run whose
identity changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compute.ablations import MAX_INDEX, SWEEPS, parse_ablation
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
    read_text,
)

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("float32", "float16", "bfloat16")
EMBEDDING_DTYPES = ("float32", "float16", "none")
LABEL_SOURCES = ("categories", "captions")


@dataclass
class ModelConfig:
    clip: str = ""  # CLIP, SigLIP or SigLIP 2: hub id or local directory (save_pretrained layout); required
    captioner: str = "none"  # "none", or a hub id / local directory of a conditional captioner
    device: str = "auto"
    dtype: str = "float32"  # float16 / bfloat16 halve memory and time on a GPU
    batch_size: int = 16


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
    text: str
    label: str


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
class DecompositionConfig:
    # Split every image's embedding into the direct contributions of its components and store their shares
    # of every logit and every ablation's direct effect (compute.decomposition), during the sweep.
    enabled: bool = False
    # The components' vectors in the joint space (for rescore's shares of new prompts and TextSpan):
    # float32 | float16 | none
    vectors: str = "float32"
    textspan_layers: int = 4  # TextSpan describes every head of the last N layers (0: none)
    textspan_texts: int = 5  # texts chosen per head


@dataclass
class Experiment:
    name: str
    model: ModelConfig
    dataset: DatasetConfig
    prompts: list[Prompt]
    ablations: AblationsConfig
    store: StoreConfig
    captions: CaptionsConfig
    decomposition: DecompositionConfig = field(default_factory=DecompositionConfig)
    source: Path | None = None  # the TOML file it came from

    def identity(self) -> dict[str, Any]:
        """What the stored results depend on; compared when a run is resumed. Decomposition is not part of it:
        it adds rows beside the results without changing them, and a run resumed with it newly enabled
        decomposes the images it had already done (compute.runner)."""
        return {
            "clip": self.model.clip,
            "captioner": self.model.captioner,
            "dtype": self.model.dtype,
            "dataset": _jsonable(dataclasses.asdict(self.dataset)),
            "prompts": [[p.text, p.label] for p in self.prompts],
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
        data["prompts"] = [dataclasses.asdict(p) for p in self.prompts]
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
    sections = {"name", "model", "dataset", "prompts", "ablations", "store", "captions", "decomposition"}
    _no_unknown(data, sections, "top level")
    name = data.get("name")
    if name is not None and not isinstance(name, str):
        raise InputError(f"name must be a string such as name = \"coco-cats-dogs\", got {name!r:.80}")
    if not isinstance(name, str) or not name.strip():
        raise InputError("'name' is required: a run name such as name = \"coco-cats-dogs\"")
    if "/" in name or len(name) > 100 or not name.isprintable():
        raise InputError(f"name {name!r:.120} must be under 100 characters, printable, and contain no '/'")

    model = _section(ModelConfig, data.get("model"), "model", required={"clip"})
    model.clip = resolve_model_ref(model.clip, base)
    if model.captioner != "none":
        model.captioner = resolve_model_ref(model.captioner, base)
    _choice(model.device, DEVICES, "model.device")
    _choice(model.dtype, DTYPES, "model.dtype")
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

    prompts = parse_prompts(data.get("prompts"), "prompts")
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
    decomposition = _section(DecompositionConfig, data.get("decomposition"), "decomposition")
    _choice(decomposition.vectors, EMBEDDING_DTYPES, "decomposition.vectors")
    for key in ("textspan_layers", "textspan_texts"):
        if getattr(decomposition, key) < 0 or getattr(decomposition, key) > MAX_INDEX:
            raise InputError(f"decomposition.{key} must be between 0 and {MAX_INDEX}, got {getattr(decomposition, key)}")
    return Experiment(name.strip(), model, dataset, prompts, ablations, store, captions, decomposition, source)


def _sweep_names(value: str | list[str]) -> str | list[str]:
    names = list(dict.fromkeys([value] if isinstance(value, str) else value))
    if not names:
        raise InputError("ablations.sweep must name a sweep (or \"none\" for baseline and the extras alone)")
    for name in names:
        _choice(name, SWEEPS, "ablations.sweep")
    return names[0] if len(names) == 1 else names


def parse_prompts(items: Any, where: str) -> list[Prompt]:
    """A ``[[prompts]]`` array: text and label each, no duplicate texts, at least one."""
    if not items:
        raise InputError(f"no prompts: add [[prompts]] entries with text and label ({where})")
    if not isinstance(items, list):
        raise InputError(f"'{where}' must be an array of tables: [[prompts]] text = ..., label = ...")
    if len(items) > MAX_PROMPTS:
        raise InputError(f"{len(items):,} prompts: a run holds at most {MAX_PROMPTS:,}")
    prompts = []
    for i, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise InputError(f"{where} #{i} must be a table with text and label")
        prompt = _section(Prompt, item, f"{where} #{i}", required={"text", "label"})
        prompt.text, prompt.label = prompt.text.strip(), prompt.label.strip()
        if not prompt.text or not prompt.label:
            raise InputError(f"{where} #{i}: text and label must not be empty")
        prompts.append(prompt)
    seen: set[str] = set()
    for prompt in prompts:
        if prompt.text in seen:
            raise InputError(f"duplicate prompt {prompt.text!r}: each prompt text may appear once")
        seen.add(prompt.text)
    return prompts


def load_prompts(path: str | Path) -> list[Prompt]:
    """A prompts file: just ``[[prompts]]`` entries (for rescore)."""
    path = Path(path)
    data = read_toml(path, "prompts")
    try:
        _no_unknown(data, {"prompts"}, "top level")
        return parse_prompts(data.get("prompts"), "prompts")
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
        wanted = base.replace("list[str]", "a list of strings").replace(" | ", " or ").replace("bool", "true or false")
        raise InputError(f"{where} must be {wanted}, "
                         f"got {value!r}")
    return value


def _choice(value: str, choices: tuple[str, ...], where: str) -> None:
    if value not in choices:
        raise InputError(f"{where} = {value!r} is not one of: {', '.join(choices)}")

