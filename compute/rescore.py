"""Score new prompts on a stored run without touching the vision tower.

Only CLIP's vision tower is ablated, so a run's stored (image, ablation) embeddings hold everything the
image side contributes: new prompts need one text pass and a matrix product. ``rescore`` turns that into
a new run (same images, model and ablations, new prompts) that the views, ``list`` and the dashboard
treat like any other; ``score_prompts`` is the same arithmetic in memory, for the dashboard's Prompt lab.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from compute import store
from compute.ablations import parse_ablation
from compute.captions import caption_stage, captioner_key
from compute.config import Experiment, Prompt, parse_experiment
from compute.dataset import load_dataset
from compute.errors import InputError
from compute.models import LoadedClip, load_captioner, load_clip
from compute.runlock import run_lock
from compute.runner import RunResult, format_summary, label_warning
from compute.scoring import (
    batch_result,
    check_prompts,
    cosine_logits,
    logit_scale,
    text_embeddings,
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
        row = store.find_run(con, name)
        if row is None:
            names = sorted(r["run"] for r in store.list_runs(con))
            raise InputError(f"no run named {name!r} in {db} (runs: {', '.join(names) or 'none'})")
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
                                                      "captions")}
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


def score_prompts(clip: LoadedClip, embeddings: torch.Tensor, texts: list[str]) -> torch.Tensor:
    """Logits of stored embeddings (images, ablations, E) against new prompts -> (images, ablations, P)."""
    return cosine_logits(embeddings, text_embeddings(clip, texts).cpu(), logit_scale(clip))


def rescore(db: Path, name: str, prompts: list[Prompt], new_name: str, batch_size: int = 256,
            progress: bool = True, echo=print, clip: LoadedClip | None = None,
            truncate_prompts: bool = False) -> RunResult:
    """Make run ``new_name`` from run ``name``'s stored embeddings and new ``prompts``. Prompts longer than
    the text tower's positions are refused unless ``truncate_prompts`` (or the run ``name`` opted in)."""
    store.check_store(db, write=True)
    parent = open_run(db, name)
    exp = parent.exp
    exp.name, exp.prompts = new_name, prompts
    exp.store.db = Path(db)
    images = load_dataset(exp.dataset, [p.label for p in prompts])  # labels may depend on prompt labels
    images = [r for r in images if r.image_id in parent.labels]
    if (warning := label_warning(images, [p.label for p in prompts])) is not None:
        echo(warning)
    clip = clip or load_clip(exp.model.clip, exp.model.device, exp.model.dtype)
    exp.model.truncate_prompts = exp.model.truncate_prompts or truncate_prompts
    check_prompts(clip, [p.text for p in prompts], exp.model.truncate_prompts, opt_in="--truncate-prompts")
    captioner = None
    if exp.model.captioner != "none":
        captioner = load_captioner(exp.model.captioner, exp.model.device, exp.model.dtype)
    with run_lock(db, new_name, echo):  # a second process making the same run waits here
        return _rescore_into(db, parent, name, exp, images, prompts, new_name, batch_size, progress, echo, clip,
                             captioner)


def _rescore_into(db: Path, parent: StoredRun, name: str, exp: Experiment, images: list, prompts: list[Prompt],
                  new_name: str, batch_size: int, progress: bool, echo, clip: LoadedClip, captioner) -> RunResult:
    stored = set(parent.image_ids)
    with store.connect(db) as con:
        existing = store.find_run(con, new_name)
        if existing is not None and existing.config_hash != exp.identity_hash():
            raise InputError(f"run {new_name!r} already exists in {db} with a different configuration; choose "
                             f"another --as name or remove it with: python -m compute delete {new_name} --db {db}")
        if existing is None:
            config = json.loads(exp.to_json())
            config["identity"] = exp.identity()
            config["vision"] = parent.row.config.get("vision")
            config["rescored_from"] = name
            run_id = store.create_run(con, store.NewRun(
                name=new_name, model=exp.model.clip, config_json=json.dumps(config),
                config_hash=exp.identity_hash(), n_layers=parent.row.n_layers,
                embedding_dtype=parent.row.embedding_dtype, images=images, prompts=prompts,
                ablations=[parse_ablation(a) for a in parent.ablations], parent_run=name,
                embedding_run_id=parent.row.embedding_run_id))
            # Images the parent could not read are not pending here either: carry their errors over.
            store.copy_load_errors(con, parent.row.run_id, run_id)
        else:
            run_id = existing.run_id
        done = store.done_pairs(con, run_id)

    ablation_ids = list(range(len(parent.ablations)))
    pending = [r for r in images if r.image_id in stored and any((r.image_id, a) not in done for a in ablation_ids)]
    # The only model work: one text pass. Stored embeddings are on the CPU, so the arithmetic is too.
    text_norm = text_embeddings(clip, [p.text for p in prompts]).cpu()
    scale = logit_scale(clip)
    prompt_labels = [p.label for p in prompts]
    bar = tqdm(total=len(pending), unit="img", desc=new_name, disable=not progress, file=sys.stderr)
    try:
        for i in range(0, len(pending), batch_size):
            chunk = pending[i : i + batch_size]
            emb = load_embeddings(db, parent, [r.image_id for r in chunk])  # (n, A, E)
            logits = cosine_logits(emb, text_norm, scale)  # (n, A, P)
            truth = truth_matrix([r.labels for r in chunk], prompt_labels)
            result = batch_result([r.image_id for r in chunk], ablation_ids, logits, truth, emb[:, 0], text_norm)
            with store.connect(db) as con:
                store.write_batch(con, run_id, result, point="rescore")
            bar.update(len(chunk))
    finally:
        bar.close()

    captions = None
    if captioner is not None:
        captions = caption_stage(db, run_id, clip, captioner, exp.captions,
                                 captioner_key(exp.model.captioner, exp.captions), parent.row.embedding_dtype,
                                 parent.row.embedding_run_id, progress)
        if captions.keys:
            echo(captions.describe())
    with store.connect(db) as con:
        complete = len(store.done_pairs(con, run_id)) == len(stored & {r.image_id for r in images}) * len(ablation_ids)
        if captioner is not None:
            complete = complete and store.uncaptioned(con, run_id) == 0
        store.set_status(con, run_id, "complete" if complete else "running")
        echo(format_summary(store.summary(con, run_id)))
    return RunResult(run_id, complete, captions)
