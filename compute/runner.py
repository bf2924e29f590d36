"""``python -m compute run``: an experiment from file to store, resumable.

Order of work: check everything that can be checked (experiment, dataset, model, ablation ranges) before
the store is touched, so bad input writes nothing; then create or resume the run; then per batch of
images: decode once (in worker processes, compute.loader), compute every pending ablation and the
selection on the device, and hand the batch to the store writer (a thread, compute.writer) while the next
one computes. A batch is committed whole or not at all, so a run killed at any moment loses at most the
batches in flight and the next invocation resumes. Two
processes running the same run of one store take turns (compute.runlock): the second waits, then finds
the work done.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from compute import store
from compute.ablations import Ablation, dedupe, mean_needs, parse_ablation, sweeps
from compute.captions import CaptionStats, caption_stage, captioner_key
from compute.config import Experiment
from compute.dataset import ImageRecord, load_dataset, uncarried_labels
from compute.engine import SweepEngine, attention_means, means_on, plain_batch
from compute.errors import InputError
from compute.killpoints import kill_point
from compute.loader import Batch, Loader, default_workers
from compute.models import LoadedCaptioner, LoadedClip, load_captioner, load_clip, model_summary
from compute.runlock import run_lock
from compute.scoring import (
    PendingBatch,
    logit_scale,
    stacked_logits,
    text_embeddings,
    text_tokens,
    truth_matrix,
)
from compute.writer import BatchWriter, WriterStats


@dataclass
class Prepared:
    """A checked experiment, ready to run: nothing has been written yet."""

    exp: Experiment
    images: list[ImageRecord]
    clip: LoadedClip
    ablations: list[Ablation]
    captioner: LoadedCaptioner | None


def prepare(exp: Experiment, clip: LoadedClip | None = None) -> Prepared:
    """Check the experiment; ``clip`` reuses a model already loaded from exp.model.clip."""
    images = load_dataset(exp.dataset, [p.label for p in exp.prompts])
    clip = clip or load_clip(exp.model.clip, exp.model.device, exp.model.dtype)
    ablations = resolve_ablations(exp, clip.n_layers, clip.n_heads, clip.has_cls)
    captioner = None
    if exp.model.captioner != "none":
        captioner = load_captioner(exp.model.captioner, exp.model.device, exp.model.dtype)
    return Prepared(exp, images, clip, ablations, captioner)


def resolve_ablations(exp: Experiment, n_layers: int, n_heads: int | None = None, cls: bool = True) -> list[Ablation]:
    """The run's ablations in order: the sweeps (baseline first), then the extras, duplicates dropped.
    ``cls``: the tower has a CLS token (else knockout targets naming it are refused, and left out of flow)."""
    extra = [parse_ablation(text, n_layers, n_heads, cls) for text in exp.ablations.extra]
    return dedupe(sweeps(exp.ablations.sweep, n_layers, n_heads, cls) + extra)


def label_warning(images: list[ImageRecord], prompt_labels: list[str]) -> str | None:
    """One line when some prompt label (known to the dataset) is carried by none of the run's images."""
    labels = uncarried_labels(images, prompt_labels)
    if not labels:
        return None
    return (f"warning: no selected image carries the label(s) {', '.join(repr(x) for x in labels)}: "
            f"their prompts can never be correct (fine for distractors)")


# --------------------------------------------------------------------------------------------------
# The run.


class ConfigMismatch(InputError):
    pass


@dataclass
class SweepStats:
    """Where a run's time went (seconds), for the bench and the README's figures."""

    prepare_s: float = 0.0  # dataset, model and captioner loaded and checked
    images: int = 0  # images swept now
    sweep_s: float = 0.0  # the sweep loop: first batch requested to last batch committed
    first_batch_s: float = 0.0  # from the loop's start to the first batch's results on the host
    workers: int = 0
    ray: str = ""  # where a --ray sweep ran (compute.distributed.Layout.describe); "" in this process
    writer: WriterStats = field(default_factory=WriterStats)

    def describe(self) -> str:
        rate = self.images / self.sweep_s if self.sweep_s else 0.0
        w = self.writer
        where = self.ray or f"{self.workers} decode workers"
        return (f"swept {self.images} images in {self.sweep_s:.1f} s: {rate:.1f} images/s (setup {self.prepare_s:.1f} s, "
                f"first batch after {self.first_batch_s:.2f} s, {where}, {w.batches} batches "
                f"committed in {w.sessions} store sessions)")


@dataclass
class RunResult:
    """What ``run`` (and ``rescore``) did."""

    run_id: int
    complete: bool  # every pending pair computed (and captioned, with a captioner)
    captions: CaptionStats | None  # None without a captioner
    stats: SweepStats | None = None


@dataclass
class SweepWork:
    """What one invocation's sweep computes and where its results go: the pending images of run ``run_id``,
    every ablation of those not in ``done``, committed batch by batch through compute.writer."""

    prep: Prepared
    run_id: int
    pending: list[ImageRecord]
    done: set[tuple[int, int]]  # (image_id, ablation_id) already committed
    ablation_ids: dict[Ablation, int]
    means: dict[str, dict[int, np.ndarray]]  # {stat: {layer: (tokens, width) float32}} the mean kinds need
    method: str
    progress: bool
    stats: SweepStats


    def bar(self) -> tqdm:
        """The sweep's progress bar (images), the same wherever the sweep runs."""
        return tqdm(total=len(self.pending), unit="img", desc=self.prep.exp.name, disable=not self.progress,
                    file=sys.stderr, smoothing=0.1)


Sweeper = Callable[[SweepWork, Loader], None]  # computes and commits a SweepWork (the loader: this process's)


def pending_ablations(image_ids: list[int], ablation_ids: Iterable[int], done: set[tuple[int, int]]) -> list[int]:
    """The ablation ids a batch of images still needs. An image's pairs are committed together, so they are
    pending all or none; the primary key of selection_t would refuse a second copy anyway."""
    return [a for a in ablation_ids if any((i, a) not in done for i in image_ids)]


def _config_diff(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(keys) or "configuration"


def set_threads(threads: int | None) -> None:
    """CPU threads for torch; None keeps torch's default (all cores). One thread can win when other work
    shares the cores: tiny ops then wait for a busy second core."""
    if threads is not None:
        torch.set_num_threads(threads)


def run(
    exp: Experiment,
    method: str = "engine",
    progress: bool = True,
    echo: Callable[[str], None] = print,
    threads: int | None = None,
    clip: LoadedClip | None = None,
    workers: int | None = None,
    sweeper: Sweeper | None = None,
    before_writing: Callable[[], None] | None = None,
) -> RunResult:
    """Run or resume ``exp``. Raises InputError on bad input before writing anything.

    workers: decode processes (default: the cores this process may use; 0: one thread in this process).
    sweeper: where the pending pairs are computed (default: this process; compute.distributed passes its
    Ray sweep). Everything else (checks, the run's rows, the mean pass, captions, the summary) is the same.
    before_writing: called once the input is checked, before the store is touched (compute.distributed
    reaches its Ray cluster there: one that is not there leaves no store and no run behind).
    """
    start = time.perf_counter()
    store.check_store(exp.store.db, write=True)  # a store-path problem fails before a model is loaded
    prep = prepare(exp, clip)
    if before_writing is not None:
        before_writing()
    if (warning := label_warning(prep.images, [p.label for p in exp.prompts])) is not None:
        echo(warning)
    with run_lock(exp.store.db, exp.name, echo):  # a second process on the same run waits here
        return _run(prep, method, progress, echo, threads, workers, start, sweeper or _sweep)


def _run(prep: Prepared, method: str, progress: bool, echo: Callable[[str], None], threads: int | None,
         workers: int | None, start: float, sweeper: Sweeper) -> RunResult:
    exp = prep.exp
    set_threads(threads)
    stats = SweepStats(prepare_s=time.perf_counter() - start)
    stats.workers = default_workers() if workers is None else workers
    clip, ablations, images = prep.clip, prep.ablations, prep.images
    n_layers = clip.n_layers
    db = exp.store.db
    identity = exp.identity()

    with store.connect(db) as con:
        existing = store.find_run(con, exp.name)
        if existing is not None:
            if existing.config_hash != exp.identity_hash():
                old = existing.config.get("identity", {})
                raise ConfigMismatch(
                    f"run {exp.name!r} already exists in {db} with a different configuration "
                    f"(differs in: {_config_diff(old, identity)}); rename the experiment (name = ...) or "
                    f"remove the old run with: python -m compute delete {exp.name} --db {db}"
                )
            run_id = existing.run_id
            echo(f"resuming run {exp.name!r} in {db}")
        else:
            config = json.loads(exp.to_json())
            config["identity"] = identity
            config["vision"] = model_summary(clip)
            run_id = store.create_run(
                con,
                store.NewRun(
                    name=exp.name, model=exp.model.clip, config_json=json.dumps(config),
                    config_hash=exp.identity_hash(), n_layers=n_layers, embedding_dtype=exp.store.embeddings,
                    images=images, prompts=exp.prompts, ablations=ablations,
                ),
            )
            echo(f"new run {exp.name!r} in {db}: {len(images)} images x {len(ablations)} ablations x "
                 f"{len(exp.prompts)} prompts")
        done = store.done_pairs(con, run_id)
        needs = mean_needs(ablations)  # {stat name: layers}
        means_np = {name: store.load_stats(con, run_id, name) for name in needs}

    ablation_ids = {a: i for i, a in enumerate(ablations)}
    pending = [r for r in images if any((r.image_id, i) not in done for i in ablation_ids.values())]

    with Loader(clip.image_processor, clip.device, clip.dtype, exp.model.batch_size,
                stats.workers) as loader:
        if pending and any(not layers <= set(means_np[name]) for name, layers in needs.items()):
            means_np = _compute_means(clip, loader, images, needs, progress)
            with store.connect(db) as con:
                for name, per_layer in means_np.items():
                    store.save_stats(con, run_id, name, per_layer)
        if pending:
            sweeper(SweepWork(prep, run_id, pending, done, ablation_ids, means_np, method, progress, stats), loader)
            echo(stats.describe())

    captions = None
    if prep.captioner is not None:
        key = captioner_key(exp.model.captioner, exp.captions)
        captions = caption_stage(db, run_id, clip, prep.captioner, exp.captions, key, exp.store.embeddings,
                                 progress=progress)
        if captions.keys:
            echo(captions.describe())

    with store.connect(db) as con:
        done = store.done_pairs(con, run_id)
        failed = store.failed_images(con, run_id)
        complete = all(
            (r.image_id, i) in done for r in images if r.image_id not in failed for i in ablation_ids.values()
        )
        if prep.captioner is not None:
            complete = complete and store.uncaptioned(con, run_id) == 0
        store.set_status(con, run_id, "complete" if complete else "running")
        rows = store.summary(con, run_id)
    if failed:
        echo(f"{len(failed)} image(s) could not be read and were skipped (see the errors view)")
    echo(format_summary(rows))
    return RunResult(run_id, complete, captions, stats)


def _compute_means(clip: LoadedClip, loader: Loader, images: list[ImageRecord], needs: dict[str, set[int]],
                   progress: bool) -> dict[str, dict[int, np.ndarray]]:
    bar = tqdm(total=len(images), unit="img", desc="dataset means", disable=not progress, file=sys.stderr)

    def pixels() -> Iterator[torch.Tensor]:
        for batch in loader.batches(images):
            kill_point("mean")
            bar.update(len(batch.attempted))
            if batch.pixel_values is not None:
                yield batch.pixel_values

    try:
        means = attention_means(clip.model, pixels(), needs)
    finally:
        bar.close()
    return {name: {layer: m.cpu().numpy() for layer, m in stats.items()} for name, stats in means.items()}


def _sweep(work: SweepWork, loader: Loader) -> None:
    """The sweep in this process: decode workers feed the engine on the model's device, a thread commits."""
    prep, run_id, pending, done, ablation_ids = work.prep, work.run_id, work.pending, work.done, work.ablation_ids
    method, stats = work.method, work.stats
    exp, clip, ablations = prep.exp, prep.clip, prep.ablations
    means = means_on(work.means, clip.device, clip.dtype)
    texts = [p.text for p in exp.prompts]
    prompt_labels = [p.label for p in exp.prompts]
    text_norm = text_embeddings(clip, texts)  # once per run, not per ablation or batch
    scale = logit_scale(clip)
    engine = SweepEngine(clip.model, ablations, means) if method == "engine" else None
    tokens = None
    if method == "plain":
        tokens = text_tokens(clip, texts)

    def compute(batch: Batch) -> PendingBatch | store.BatchResult:
        """Every pending pair of one batch, on the device; its copy to the host is queued, not awaited."""
        if batch.pixel_values is None:  # every image of the batch failed to load: record the errors only
            return store.BatchResult.failed(batch.errors, batch.attempted)
        if engine is not None:
            embeddings, logits = stacked_logits(engine.embeddings(batch.pixel_values), ablations, text_norm, scale)
        else:
            embeddings, logits = plain_batch(clip.model, ablations, batch.pixel_values, tokens, means)
        keep = pending_ablations([r.image_id for r in batch.records], ablation_ids.values(), done)  # not stored yet
        if len(keep) < len(ablations):
            logits, kept = logits[:, keep], embeddings[:, keep]
        else:
            kept = embeddings
        truth = truth_matrix([r.labels for r in batch.records], prompt_labels)
        # baseline is ablation 0 and always computed: its embedding is the judge
        return PendingBatch([r.image_id for r in batch.records], keep, logits, truth, embeddings[:, 0], text_norm,
                            kept, exp.store.embeddings, batch.errors, batch.attempted)

    def hand_over(item: PendingBatch | store.BatchResult) -> None:
        writer.put(item.result() if isinstance(item, PendingBatch) else item)
        if not stats.first_batch_s:
            stats.first_batch_s = time.perf_counter() - start

    bar = work.bar()
    loader.start()  # fork the workers before the writer's thread exists
    start = time.perf_counter()
    try:
        with BatchWriter(exp.store.db, run_id, on_commit=lambda r: bar.update(len(r.attempted))) as writer:
            previous = None
            for batch in loader.batches(pending):
                current = compute(batch)
                if previous is not None:  # the device has this batch queued while the previous one lands
                    hand_over(previous)
                previous = current
            if previous is not None:
                hand_over(previous)
        stats.writer = writer.stats
    finally:
        bar.close()
    stats.images = len(pending)
    stats.sweep_s = time.perf_counter() - start


def format_summary(rows: list[tuple]) -> str:
    """The per-ablation table printed at the end of a run."""
    has_captions = any(r[4] is not None for r in rows)
    head = f"{'ablation':<22} {'images':>6} {'accuracy':>9} {'score_baseline':>15}"
    if has_captions:
        head += f" {'caption_score':>14}"
    lines = [head, "-" * len(head)]
    for ablation, n, acc, score, cap in rows:
        line = f"{ablation:<22} {n:>6} {_fmt(acc):>9} {_fmt(score):>15}"
        if has_captions:
            line += f" {_fmt(cap):>14}"
        lines.append(line)
    return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"
