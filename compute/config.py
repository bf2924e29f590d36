"""Experiment files: one TOML file parsed into dataclasses.

Every key is declared below with its type and default; an unknown key at any level is an error naming it.
Relative paths resolve against the experiment file's folder. ``identity()`` is the part of the config that
defines a run's results (device, batch size and DB path do not): the store refuses to resume a run whose
identity changed.

Prompts come as ``[[prompts]]`` and ``[[templates]]`` (compute.prompts, which expands templates once: the
run stores, and its identity holds, the expanded prompts, so a template that expands to the prompts a file
used to list is the same run). The generic reading of TOML tables into dataclasses is compute.validation's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compute.ablations import MAX_INDEX, SWEEPS, parse_ablation, parse_spec
from compute.errors import InputError
from compute.prompts import Prompt, parse_prompts
from compute.store import default_db
from compute.validation import (
    MAX_ABLATIONS,
    MAX_BATCH,
    MAX_BEAMS,
    MAX_IMAGES,
    MAX_NEW_TOKENS,
    check_choice,
    check_count,
    check_run_name,
    no_unknown,
    read_toml,
    table_of,
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
class AttributionConfig:
    # Estimate every head's ablation of these kinds from one forward and one backward pass per image
    # (compute.attribution): a kind ("identity", "zero", "mean", "uniform") or kind:target for a kind that takes
    # one ("knockout:patches>cls"), each on every head of every layer. [] (the default): none.
    kinds: list[str] = field(default_factory=list)


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
    attribution: AttributionConfig = field(default_factory=AttributionConfig)
    source: Path | None = None  # the TOML file it came from

    def identity(self) -> dict[str, Any]:
        """What the stored results depend on; compared when a run is resumed. Decomposition and attribution are
        not part of it: they add rows beside the results without changing them, and a run resumed with either
        newly enabled (or with an attribution kind added) catches up the images it had already done
        (compute.runner)."""
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


def load_experiment(path: str | Path) -> Experiment:
    """Read and check an experiment file. Raises InputError naming the file and its first problem."""
    path = Path(path)
    data = read_toml(path, "experiment")
    try:
        return parse_experiment(data, path.resolve().parent, source=path)
    except InputError as e:
        raise InputError(f"{path}: {e}") from None


def parse_experiment(data: dict[str, Any], base: Path, source: Path | None = None) -> Experiment:
    sections = {"name", "model", "dataset", "prompts", "templates", "ablations", "store", "captions", "decomposition",
                "attribution"}
    no_unknown(data, sections, "top level")
    name = data.get("name")
    if name is not None and not isinstance(name, str):
        raise InputError(f"name must be a string such as name = \"coco-cats-dogs\", got {name!r:.80}")
    if not isinstance(name, str) or not name.strip():
        raise InputError("'name' is required: a run name such as name = \"coco-cats-dogs\"")
    name = check_run_name(name, "name")

    model = table_of(ModelConfig, data.get("model"), "model", required={"clip"})
    model.clip = resolve_model_ref(model.clip, base)
    if model.captioner != "none":
        model.captioner = resolve_model_ref(model.captioner, base)
    check_choice(model.device, DEVICES, "model.device")
    check_choice(model.dtype, DTYPE_CHOICES, "model.dtype")
    check_count(model.batch_size, "model.batch_size", MAX_BATCH, "images per batch")

    dataset_table = dict(data.get("dataset") or {})
    for key in ("categories", "caption_contains", "labels"):
        if isinstance(dataset_table.get(key), str):
            dataset_table[key] = [dataset_table[key]]
    dataset = table_of(DatasetConfig, dataset_table, "dataset", required={"images", "annotations"})
    dataset.images = _resolve(base, dataset.images)
    dataset.annotations = _resolve(base, dataset.annotations)
    if dataset.captions is not None:
        dataset.captions = _resolve(base, dataset.captions)
    for source_name in dataset.labels:
        check_choice(source_name, LABEL_SOURCES, "dataset.labels")
    if not dataset.labels:
        raise InputError("dataset.labels must name at least one of: categories, captions")
    if ("captions" in dataset.labels or dataset.caption_contains) and dataset.captions is None:
        raise InputError("dataset.captions (a COCO captions JSON) is needed for caption labels or caption_contains")
    if dataset.limit is not None:
        check_count(dataset.limit, "dataset.limit", MAX_IMAGES, "images in one run")

    prompts = parse_prompts(data.get("prompts"), "prompts", data.get("templates"))
    ablations = table_of(AblationsConfig, data.get("ablations"), "ablations")
    ablations.sweep = _sweep_names(ablations.sweep)
    if len(ablations.extra) > MAX_ABLATIONS:
        raise InputError(f"ablations.extra lists {len(ablations.extra):,} ablations: at most {MAX_ABLATIONS:,}")
    ablations.extra = [parse_ablation(text).label for text in ablations.extra]  # syntax now, range later

    store = table_of(StoreConfig, data.get("store"), "store")
    store.db = _resolve(base, store.db) if store.db is not None else default_db()
    check_choice(store.embeddings, EMBEDDING_DTYPES, "store.embeddings")
    captions = table_of(CaptionsConfig, data.get("captions"), "captions")
    check_count(captions.max_new_tokens, "captions.max_new_tokens", MAX_NEW_TOKENS, "tokens per caption")
    check_count(captions.num_beams, "captions.num_beams", MAX_BEAMS, "beams per caption")
    check_count(captions.batch_size, "captions.batch_size", MAX_BATCH, "images per batch")
    decomposition = table_of(DecompositionConfig, data.get("decomposition"), "decomposition")
    check_choice(decomposition.vectors, EMBEDDING_DTYPES, "decomposition.vectors")
    for key in ("textspan_layers", "textspan_texts"):
        if getattr(decomposition, key) < 0 or getattr(decomposition, key) > MAX_INDEX:
            raise InputError(f"decomposition.{key} must be between 0 and {MAX_INDEX}, got {getattr(decomposition, key)}")
    attribution = table_of(AttributionConfig, data.get("attribution"), "attribution")
    # each entry checked and canonical now (a target the tower cannot take: once the model is loaded)
    attribution.kinds = list(dict.fromkeys(parse_spec(text).label for text in attribution.kinds))
    return Experiment(name, model, dataset, prompts, ablations, store, captions, decomposition, source=source,
                      attribution=attribution)


def _sweep_names(value: str | list[str]) -> str | list[str]:
    names = list(dict.fromkeys([value] if isinstance(value, str) else value))
    if not names:
        raise InputError("ablations.sweep must name a sweep (or \"none\" for baseline and the extras alone)")
    for name in names:
        check_choice(name, SWEEPS, "ablations.sweep")
    return names[0] if len(names) == 1 else names


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
