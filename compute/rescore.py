"""Score new prompts on a stored run without touching the vision tower.

Only CLIP's vision tower is ablated, so a run's stored (image, ablation) embeddings hold everything the
image side contributes: new prompts need one text pass and a matrix product. ``rescore`` turns that into
a new run (same images, model and ablations, new prompts) that the views, ``list`` and the dashboard
treat like any other, made and resumed as ``run`` makes its runs (compute.lifecycle), from a complete run
only; ``score_prompts`` is the same arithmetic in memory, for the dashboard's Prompt lab.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from compute import lifecycle, store
from compute.ablations import parse_ablation
from compute.config import Experiment, parse_experiment
from compute.dataset import ImageRecord, load_dataset
from compute.decomposition import Component, direct_ids, shares_of
from compute.errors import InputError
from compute.models import LoadedCaptioner, LoadedClip, load_captioner, load_clip
from compute.prompts import Prompt
from compute.runlock import run_lock
from compute.runner import RunResult, label_warning
from compute.scoring import (
    BatchScoring,
    Decomposed,
    check_prompts,
    cosine_logits,
    logit_scale,
    prompt_embeddings,
    score_batch,
    truth_matrix,
)


@dataclass
class StoredRun:
    row: store.RunRow
    exp: Experiment  # the run's experiment, rebuilt from its stored config
    ablations: list[str]
    image_ids: list[int]  # images with stored embeddings (those that loaded)
    labels: dict[int, tuple[str, ...]]  # every image of the run, with its labels as stored


def open_run(db: Path, name: str) -> StoredRun:
    """A stored run whose embeddings can be rescored. Raises InputError when it cannot."""
    if not Path(db).is_file():
        raise InputError(f"no store at {db}")
    with store.connect(db, read_only=True) as con:
        row = store.require_run(con, name)
        if row.embedding_dtype == "none":
            raise InputError(f"run {name!r} kept no image embeddings (store.embeddings = 'none'): "
                             f"rerun it with embeddings to rescore")
        ablations = store.run_ablations(con, row.run_id)
        image_ids = store.embedded_images(con, row.embedding_run_id)
        labels = {int(i): tuple(lab) for i, _, _, lab in store.run_images(con, row.run_id)}
    return StoredRun(row, experiment_from_config(row.config), ablations, image_ids, labels)


def experiment_from_config(config: dict) -> Experiment:
    """Rebuild the Experiment a run was made from (its stored, resolved config)."""
    data = {k: v for k, v in config.items() if k in ("name", "model", "dataset", "prompts", "ablations", "store",
                                                      "captions", "decomposition")}
    data["dataset"] = {k: v for k, v in data["dataset"].items() if v is not None}
    return parse_experiment(data, Path("/"))


def load_embeddings(db: Path, run: StoredRun, image_ids: list[int]) -> torch.Tensor:
    """Stored embeddings of ``image_ids`` under every ablation. -> (images, ablations, E) float32."""
    with store.connect(db, read_only=True) as con:
        keys, flat = store.embeddings(con, run.row.embedding_run_id, image_ids, run.row.embedding_dtype)
    n, a = len(image_ids), len(run.ablations)
    if len(keys) != n * a:
        raise InputError(f"run {run.row.run!r} is missing stored embeddings for some images (run it to completion)")
    return torch.from_numpy(flat.reshape(n, a, -1))


def _decomposition_from(db: Path, parent: StoredRun, run_id: int) -> bool:
    """Whether the rescored run gets contributions and direct effects: when its parent has the vectors of every
    image it decomposed (records the run's components then)."""
    with store.connect(db, read_only=True) as con:
        components = store.run_components(con, parent.row.run_id)
        kept = store.decomposed(con, parent.row.embedding_run_id, parent.image_ids)
    dtypes = {dtype for _, dtype in kept.values()}
    if not components or len(kept) < len(parent.image_ids) or "none" in dtypes:
        return False
    with store.connect(db) as con:
        store.ensure_components(con, run_id, [Component(kind, layer, head) for _, kind, layer, head in components])
    return True


def decomposition_of(db: Path, parent: StoredRun, image_ids: list[int], scoring: BatchScoring) -> Decomposed:
    """The new prompts' shares of every component and direct effects of every ablation, for ``image_ids``, from
    the parent's stored vectors (no vision tower)."""
    ablations = [parse_ablation(a) for a in parent.ablations]
    ids = direct_ids(ablations)
    with store.connect(db, read_only=True) as con:
        n_components = len(store.run_components(con, parent.row.run_id))
        norms = store.decomposed(con, parent.row.run_id, image_ids)
        vectors = store.component_vectors(con, parent.row.embedding_run_id, image_ids, list(range(n_components)))
        direct = store.direct_vectors(con, parent.row.embedding_run_id, image_ids, ids) if ids else \
            np.zeros((len(image_ids), 0, 1), np.float32)
    if vectors is None or direct is None or len(norms) != len(image_ids):
        raise InputError(f"run {parent.row.run!r} is missing stored decomposition vectors for some images")
    vectors, direct = torch.from_numpy(vectors), torch.from_numpy(direct)
    tensors = {"norm": torch.tensor([norms[i][0] for i in image_ids], dtype=torch.float32),
               "shares": shares_of(vectors, scoring.text_norm, scoring.scale),
               "direct": shares_of(direct, scoring.text_norm, scoring.scale)}
    return Decomposed(tensors, ids, "none")  # its vectors stay the parent's (embedding_run_id)


def score_prompts(clip: LoadedClip, embeddings: torch.Tensor, prompts: list[list[str]] | list[str]) -> torch.Tensor:
    """Logits of stored embeddings (images, ablations, E) against new prompts (each a text, or an ensemble's
    texts: compute.prompts.Prompt.texts) -> (images, ablations, P)."""
    return cosine_logits(embeddings, prompt_embeddings(clip, prompts).cpu(), logit_scale(clip))


def rescore(db: Path, name: str, prompts: list[Prompt], new_name: str, batch_size: int = 256,
            progress: bool = True, echo=print, clip: LoadedClip | None = None,
            truncate_prompts: bool = False) -> RunResult:
    """Make run ``new_name`` from run ``name``'s stored embeddings and new ``prompts`` (or resume it). Raises
    InputError, with nothing written, when run ``name`` cannot be rescored (not complete, no embeddings).
    Prompts longer than the text tower's positions are refused unless ``truncate_prompts`` (or the run
    ``name`` opted in)."""
    store.check_store(db, write=True)
    parent = open_run(db, name)
    if parent.row.status != "complete":  # its stored embeddings are not all there yet
        raise InputError(f"run {name!r} in {db} is not complete (status {parent.row.status!r}: still computing, or "
                         f"stopped part way): run it to completion first (the same `python -m compute run` "
                         f"command resumes it), then rescore it")
    exp = parent.exp
    exp.name, exp.prompts = new_name, prompts
    exp.store.db = Path(db)
    images = load_dataset(exp.dataset, [p.label for p in prompts])  # labels may depend on prompt labels
    images = [r for r in images if r.image_id in parent.labels]
    if (warning := label_warning(images, [p.label for p in prompts])) is not None:
        echo(warning)
    # The prompts in float32 whatever the run computed in: the only model work here is the text tower.
    clip = clip or load_clip(exp.model.clip, exp.model.device, "float32")
    exp.model.truncate_prompts = exp.model.truncate_prompts or truncate_prompts
    check_prompts(clip, [p.text for p in prompts], exp.model.truncate_prompts, opt_in="--truncate-prompts")
    captioner = None
    if exp.model.captioner != "none":
        captioner = load_captioner(exp.model.captioner, exp.model.device, exp.model.dtype)
    with run_lock(db, new_name, echo):  # a second process making the same run waits here
        result = _rescore_into(parent, exp, images, batch_size, progress, echo, clip, captioner)
    if result.complete:
        echo(f"rescored {name!r} into run {new_name!r} in {db}: open it in the dashboard (pick {new_name!r} in the "
             f"sidebar) or export it with: python -m compute export --run {new_name} --db {db}")
    return result


def _rescore_into(parent: StoredRun, exp: Experiment, images: list[ImageRecord], batch_size: int, progress: bool,
                  echo, clip: LoadedClip, captioner: LoadedCaptioner | None) -> RunResult:
    db = exp.store.db
    ablations = [parse_ablation(a) for a in parent.ablations]
    new = lifecycle.new_run(exp, images, ablations, parent.row.config.get("vision"), parent.row.n_layers, parent.row)
    opened = lifecycle.create_or_resume(db, new, echo)
    stored = set(parent.image_ids)  # the parent's unreadable images have none: the run carries their errors
    pending = [r for r in opened.pending() if r.image_id in stored]
    # The only model work: one text pass. Stored embeddings are on the CPU, so the arithmetic is too.
    scoring = BatchScoring(prompt_embeddings(clip, [p.texts for p in exp.prompts]).cpu(), logit_scale(clip),
                           opened.pending_ablations(pending))
    exp.decomposition.enabled = _decomposition_from(db, parent, opened.run_id)
    prompt_labels = [p.label for p in exp.prompts]
    bar = tqdm(total=len(pending), unit="img", desc=exp.name, disable=not progress, file=sys.stderr)
    try:
        for i in range(0, len(pending), batch_size):
            chunk = pending[i : i + batch_size]
            emb = load_embeddings(db, parent, [r.image_id for r in chunk])  # (n, A, E)
            truth = truth_matrix([r.labels for r in chunk], prompt_labels)
            decomposed = None
            if exp.decomposition.enabled:
                decomposed = decomposition_of(db, parent, [r.image_id for r in chunk], scoring)
            result = score_batch(scoring, [r.image_id for r in chunk], truth, emb, decomposition=decomposed).result()
            with store.connect(db) as con:
                store.write_batch(con, opened.run_id, result, point="rescore")
            bar.update(len(chunk))
    finally:
        bar.close()
    end = lifecycle.finish(exp, opened, clip, captioner, progress, echo)
    return RunResult(opened.run_id, end.complete, end.captions)
