"""``python -m compute run``: an experiment from file to store, resumable.

Order of work: check everything that can be checked (experiment, dataset, model, ablation ranges) before
the store is touched, so bad input writes nothing; then create or resume the run (compute.lifecycle, as
``rescore`` does); then per batch of images: decode once (in worker processes, compute.loader), compute every
pending ablation and the selection on the device (compute.scoring.score_batch, as the Ray sweep does), and
hand the batch to the store writer (a thread, compute.writer) while the next one computes; then the caption
stage, the completion check and the summary (compute.lifecycle again). A batch is committed whole or not at
all, so a run killed at any moment loses at most the batches in flight and the next invocation resumes. Two
processes running the same run of one store take turns (compute.runlock): the second waits, then finds
the work done. Below float32 the sweep verifies its selections in float32 (compute.precision): the run holds a
float32 model beside the one it computes in, and the mean pass, the prompts' embeddings, the judge and the
caption stage use the float32 one.

Long because a run has three passes over its images that share the preparation, the loader and the writer:
the sweep, and the catch-up passes of a run resumed with decomposition or attribution newly enabled
(``_decompose``, ``_attribute``), which give the images it had done what the sweep gives new ones.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from compute import lifecycle, store
from compute.ablations import (
    Ablation,
    Spec,
    attribution_needs,
    dedupe,
    estimated_ablations,
    mean_needs,
    parse_ablation,
    parse_spec,
    sweeps,
)
from compute.attribution import METRIC, Attributor, prompt_pairs
from compute.captions import CaptionStats
from compute.config import Experiment
from compute.dataset import ImageRecord, load_dataset, uncarried_labels
from compute.decomposition import Decomposer, model_components
from compute.devices import DtypeChoice
from compute.engine import attention_means, means_on
from compute.killpoints import kill_point
from compute.kinds import Means
from compute.loader import Batch, Loader, default_workers
from compute.models import LoadedCaptioner, LoadedClip, load_captioner, load_pair, model_summary
from compute.precision import VerifiedSweep, VerifyStats
from compute.runlock import run_lock
from compute.scoring import (
    Attributed,
    BatchScoring,
    PendingBatch,
    check_finite,
    check_image_embedding,
    check_prompts,
    logit_scale,
    prompt_embeddings,
    score_batch,
    sweep_pairs,
    truth_matrix,
)
from compute.towers import has_cls, n_heads_of, n_layers_of
from compute.writer import BatchWriter, WriterStats


@dataclass
class Prepared:
    """A checked experiment, ready to run: nothing has been written yet."""

    exp: Experiment
    images: list[ImageRecord]
    clip: LoadedClip  # float32: the mean pass, the prompts, the judge, captions, verification
    ablations: list[Ablation]
    captioner: LoadedCaptioner | None
    fast: LoadedClip | None = None  # the model the sweep computes in (None: clip, a float32 run)
    dtype: DtypeChoice | None = None  # what the run asked for and computes in (None: float32)
    specs: list[Spec] = field(default_factory=list)  # [attribution] kinds, checked against the tower


def prepare(exp: Experiment, clip: LoadedClip | None = None, images: list[ImageRecord] | None = None) -> Prepared:
    """Check the experiment; ``clip`` reuses a float32 model already loaded from exp.model.clip, ``images``
    the dataset already loaded from exp.dataset."""
    if images is None:
        images = load_dataset(exp.dataset, [p.label for p in exp.prompts])
    clip, fast, choice = load_pair(exp.model.clip, exp.model.device, exp.model.dtype, clip)
    check_prompts(clip, [p.text for p in exp.prompts], exp.model.truncate_prompts)  # and the text embeddings
    check_image_embedding(clip)
    ablations = resolve_ablations(exp, n_layers_of(clip.model), n_heads_of(clip.model), has_cls(clip.model))
    captioner = None
    if exp.model.captioner != "none":
        captioner = load_captioner(exp.model.captioner, exp.model.device, choice.used)
    specs = [parse_spec(text, has_cls(clip.model)) for text in exp.attribution.kinds]  # knockout:patches>cls on SigLIP
    return Prepared(exp, images, clip, ablations, captioner, fast, choice, specs)


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
    verify: VerifyStats | None = None  # a low-precision sweep in this process: what its verification did

    def describe(self) -> str:
        rate = self.images / self.sweep_s if self.sweep_s else 0.0
        w = self.writer
        where = self.ray or f"{self.workers} decode workers"
        return (f"swept {self.images} images in {self.sweep_s:.1f} s: {rate:.1f} images/s (setup {self.prepare_s:.1f} s, "
                f"first batch after {self.first_batch_s:.2f} s, {where}, {w.batches} batches "
                f"committed in {w.sessions} store sessions, {w.wait_s:.1f} s waiting for the store)")


@dataclass
class RunResult:
    """What ``run`` (and ``rescore``) did."""

    run_id: int
    complete: bool  # every pending pair computed (and captioned, with a captioner)
    captions: CaptionStats | None  # None without a captioner
    stats: SweepStats | None = None


@dataclass
class SweepWork:
    """What one invocation's sweep computes and where its results go: the pending images of run ``run_id``
    under the pending ablations ``keep``, committed batch by batch through compute.writer."""

    prep: Prepared
    run_id: int
    pending: list[ImageRecord]
    keep: list[int]  # ablation ids still pending (compute.lifecycle.OpenRun.pending_ablations)
    means: dict[str, dict[int, np.ndarray]]  # {stat: {layer: (tokens, width) float32}} the mean kinds need
    method: str
    progress: bool
    stats: SweepStats
    specs: list[Spec] = field(default_factory=list)  # what the sweep attributes ([] : nothing)
    estimate_ids: list[int] = field(default_factory=list)  # estimate_t ids of their columns

    def bar(self) -> tqdm:
        """The sweep's progress bar (images), the same wherever the sweep runs."""
        return tqdm(total=len(self.pending), unit="img", desc=self.prep.exp.name, disable=not self.progress,
                    file=sys.stderr, smoothing=0.1)


Sweeper = Callable[[SweepWork, Loader], None]  # computes and commits a SweepWork (the loader: this process's)


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
    images: list[ImageRecord] | None = None,
) -> RunResult:
    """Run or resume ``exp``. Raises InputError on bad input before writing anything.

    workers: decode processes (default: the cores this process may use; 0: one thread in this process).
    clip: a float32 model already loaded from exp.model.clip (else loaded here; one in another dtype is not
    reused: the run needs float32's). sweeper: where the pending pairs are computed (default: this process; compute.distributed passes its
    Ray sweep). Everything else (checks, the run's rows, the mean pass, captions, the summary) is the same.
    before_writing: called once the input is checked, before the store is touched (compute.distributed
    reaches its Ray cluster there: one that is not there leaves no store and no run behind).
    images: exp.dataset already loaded (``python -m compute run`` loads it before it imports torch).
    """
    start = time.perf_counter()
    store.check_store(exp.store.db, write=True)  # a store-path problem fails before a model is loaded
    prep = prepare(exp, clip, images)
    if before_writing is not None:
        before_writing()
    if (warning := label_warning(prep.images, [p.label for p in exp.prompts])) is not None:
        echo(warning)
    with run_lock(exp.store.db, exp.name, echo):  # a second process on the same run waits here
        return _run(prep, method, progress, echo, threads, workers, start, sweeper or _sweep)


def _run(prep: Prepared, method: str, progress: bool, echo: Callable[[str], None], threads: int | None,
         workers: int | None, start: float, sweeper: Sweeper) -> RunResult:
    exp, clip = prep.exp, prep.clip
    set_threads(threads)
    stats = SweepStats(prepare_s=time.perf_counter() - start)
    stats.workers = default_workers() if workers is None else workers
    db = exp.store.db
    new = lifecycle.new_run(exp, prep.images, prep.ablations, model_summary(clip), n_layers_of(clip.model),
                            dtype=prep.dtype)
    opened = lifecycle.create_or_resume(db, new, echo)
    pending = opened.pending()
    specs, estimate_ids = _estimates(prep, opened, echo)
    needs = mean_needs(prep.ablations)  # {stat name: layers}
    for name, layers in attribution_needs(specs, n_layers_of(clip.model)).items():
        needs[name] = needs.get(name, set()) | layers
    means_np = {}
    if needs:
        with store.connect(db) as con:
            means_np = {name: store.load_stats(con, opened.run_id, name) for name in needs}

    undecomposed = _undecomposed(prep, opened, pending)
    unattributed = _unattributed(prep, opened, pending, specs)
    with Loader(clip.image_processor, clip.device, clip.dtype, exp.model.batch_size,
                stats.workers) as loader:
        if (pending or undecomposed or unattributed) and any(not layers <= set(means_np[name])
                                                             for name, layers in needs.items()):
            means_np = _compute_means(clip, loader, prep.images, needs, progress)
            with store.connect(db) as con:
                for name, per_layer in means_np.items():
                    store.save_stats(con, opened.run_id, name, per_layer)
        if undecomposed:  # the images done before decomposition was enabled: their unablated pass alone
            echo(f"decomposing {len(undecomposed)} image(s) swept before decomposition was enabled")
            _decompose(SweepWork(prep, opened.run_id, undecomposed, [], means_np, method, progress, stats), loader)
        for group, records in unattributed.items():  # likewise for attribution, per set of specs missing
            echo(f"attributing {len(records)} image(s) swept before attribution of {', '.join(s.label for s in group)} "
                 f"was asked for")
            ids = [estimate_ids[k] for k, a in enumerate(_columns(specs, clip)) if a[0] in group]
            _attribute(SweepWork(prep, opened.run_id, records, [], means_np, method, progress, stats, list(group),
                                 ids), loader)
        if pending:
            keep = opened.pending_ablations(pending)
            sweeper(SweepWork(prep, opened.run_id, pending, keep, means_np, method, progress, stats, specs,
                              estimate_ids), loader)
            echo(stats.describe())
            if stats.verify is not None:
                echo(stats.verify.describe(prep.dtype.used))

    end = lifecycle.finish(exp, opened, clip, prep.captioner, progress, echo)
    return RunResult(opened.run_id, end.complete, end.captions, stats)


def _undecomposed(prep: Prepared, opened: lifecycle.OpenRun, pending: list[ImageRecord]) -> list[ImageRecord]:
    """With decomposition enabled: the images whose pairs are all done but which have no decomposition (a run
    resumed with it newly enabled); the pending ones get theirs in the sweep. Records the run's components."""
    if not prep.exp.decomposition.enabled:
        return []
    with store.connect(prep.exp.store.db) as con:
        store.ensure_components(con, opened.run_id, model_components(prep.clip.model))
        done = store.decomposed_images(con, opened.run_id) | store.failed_images(con, opened.run_id)
    waiting = {r.image_id for r in pending}
    return [r for r in opened.images if r.image_id not in done and r.image_id not in waiting]


def _columns(specs: list[Spec], clip: LoadedClip) -> list[tuple[Spec, Ablation]]:
    """Every estimate column of ``specs``: (its spec, the head-level ablation it stands for), in the order
    compute.attribution.Attributor computes them."""
    ablations = estimated_ablations(specs, n_layers_of(clip.model), n_heads_of(clip.model))
    per_spec = len(ablations) // max(1, len(specs))
    return [(specs[k // per_spec], a) for k, a in enumerate(ablations)]


def _estimates(prep: Prepared, opened: lifecycle.OpenRun, echo: Callable[[str], None]) -> tuple[list[Spec], list[int]]:
    """The specs this invocation attributes and the estimate ids of their columns (recorded in the store, with
    the attribution and its metric in the run's config). None with one prompt: M is undefined (said once)."""
    specs = prep.specs
    if not specs:
        return [], []
    if len(prep.exp.prompts) < 2:
        echo("attribution: the margin M (selected prompt's logit minus the second's) needs two prompts at least; "
             "this run has one, so no estimates are stored")
        return [], []
    with store.connect(prep.exp.store.db) as con:
        ids = store.ensure_estimates(con, opened.run_id, [(s.label, a) for s, a in _columns(specs, prep.clip)])
        store.record_config(con, opened.run_id, "attribution", {"kinds": [s.label for s in specs], "metric": METRIC})
    return specs, ids


def _unattributed(prep: Prepared, opened: lifecycle.OpenRun, pending: list[ImageRecord],
                  specs: list[Spec]) -> dict[tuple[Spec, ...], list[ImageRecord]]:
    """With attribution asked for: the images whose pairs are all done but which lack the estimates of some
    spec (a run resumed with attribution newly enabled, or a kind added), grouped by the specs they lack; the
    pending ones get theirs in the sweep."""
    if not specs:
        return {}
    with store.connect(prep.exp.store.db) as con:
        have = store.attributed(con, opened.run_id)
        failed = store.failed_images(con, opened.run_id)
    waiting = {r.image_id for r in pending}
    groups: dict[tuple[Spec, ...], list[ImageRecord]] = {}
    for r in opened.images:
        if r.image_id in waiting or r.image_id in failed:
            continue
        lacking = tuple(s for s in specs if s.label not in have.get(r.image_id, set()))
        if lacking:
            groups.setdefault(lacking, []).append(r)
    return groups


def _attributor(work: SweepWork, scoring: BatchScoring, means: Means) -> Attributor | None:
    if not work.specs:
        return None
    # The float32 model, whatever the sweep computes in (compute.precision keeps it): the gradient and every
    # head's change are float32's.
    return Attributor(work.prep.clip.model, work.specs, means, scoring.text_norm, scoring.scale)


def _attribute(work: SweepWork, loader: Loader) -> None:
    """The attribution of ``work.pending`` (swept already) for ``work.specs``, committed per batch; the prompts
    M compares come from their stored baseline logits."""
    prep = work.prep
    clip = prep.clip
    scoring = BatchScoring(prompt_embeddings(clip, [p.texts for p in prep.exp.prompts]), logit_scale(clip), [])
    attributor = _attributor(work, scoring, means_on(work.means, clip.device, clip.dtype))
    ids = [r.image_id for r in work.pending]
    with store.connect(prep.exp.store.db) as con:
        stored = store.baseline_logits(con, work.run_id, ids, len(prep.exp.prompts))  # (images, P)
    row = {image_id: k for k, image_id in enumerate(ids)}
    labels = [s.label for s in work.specs]

    def attributed(batch: Batch) -> dict[str, store.AttributionRows]:
        pairs = prompt_pairs(torch.from_numpy(stored[[row[r.image_id] for r in batch.records]]))  # (n, 2)
        out = attributor.batch(batch.pixel_values, pairs.to(clip.device))
        return {"attribution": Attributed(out, work.estimate_ids, labels).rows({k: t.cpu().numpy()
                                                                                for k, t in out.items()})}

    _catch_up(work, loader, attributed)


def _decomposer(work: SweepWork, scoring: BatchScoring, means: Means) -> Decomposer | None:
    exp, clip = work.prep.exp, work.prep.clip
    if not exp.decomposition.enabled:
        return None
    return Decomposer(clip.model, work.prep.ablations, means, scoring.text_norm, scoring.scale,
                      exp.decomposition.vectors)


def _decompose(work: SweepWork, loader: Loader) -> None:
    """The decomposition of ``work.pending`` on their unablated pass alone, committed per batch."""
    prep = work.prep
    clip = prep.clip
    scoring = BatchScoring(prompt_embeddings(clip, [p.texts for p in prep.exp.prompts]), logit_scale(clip), [])
    decomposer = _decomposer(work, scoring, means_on(work.means, clip.device, clip.dtype))

    def decomposed(batch: Batch) -> dict[str, store.DecompositionRows]:
        found = decomposer.decomposed(decomposer.batch(batch.pixel_values))
        return {"decomposition": found.rows({k: t.cpu().numpy() for k, t in found.tensors.items()})}

    _catch_up(work, loader, decomposed)


def _catch_up(work: SweepWork, loader: Loader, rows_of: Callable[[Batch], dict]) -> None:
    """One pass over ``work.pending`` (images whose pairs are done) that stores, per decoded batch, what
    ``rows_of`` makes of it (BatchResult's ``decomposition`` or ``attribution``), committed per batch: the
    catch-up of a run resumed with decomposition or attribution newly enabled."""
    bar = work.bar()
    loader.start()
    try:
        with BatchWriter(work.prep.exp.store.db, work.run_id,
                         on_commit=lambda r: bar.update(len(r.attempted))) as writer:
            for batch in loader.batches(work.pending):
                if batch.pixel_values is None:
                    writer.put(store.BatchResult.failed(batch.errors, batch.attempted))
                    continue
                ids = np.array([r.image_id for r in batch.records], np.int64)
                writer.put(store.BatchResult(ids, np.zeros(0, np.int16), None, None, batch.errors, batch.attempted,
                                             **rows_of(batch)))
    finally:
        bar.close()


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
    prep, run_id, pending, method, stats = work.prep, work.run_id, work.pending, work.method, work.stats
    exp, clip = prep.exp, prep.clip
    prompt_labels = [p.label for p in exp.prompts]
    # once per run, not per ablation or batch; the prompts in float32 whatever the sweep's dtype (an ensemble:
    # the normalised mean of its texts)
    scoring = BatchScoring(prompt_embeddings(clip, [p.texts for p in exp.prompts]), logit_scale(clip), work.keep,
                           exp.store.embeddings)
    # The plain method's own logits are of one text per prompt: with an ensemble its check is of the image
    # side, and the logits come from its embeddings as the engine's do.
    sweep = VerifiedSweep(clip, prep.fast or clip, prep.ablations, work.means, work.keep, scoring.text_norm,
                          scoring.scale, method, [p.texts[0] for p in exp.prompts],
                          own_logits=not any(p.ensemble for p in exp.prompts))
    stats.verify = sweep.stats if sweep.verifying else None
    means = means_on(work.means, clip.device, clip.dtype)
    decomposer = _decomposer(work, scoring, means)
    attributor = _attributor(work, scoring, means)
    labels = [s.label for s in work.specs]
    # The decomposition taps the sweep's own unablated pass where that pass is float32's (the engine, in float32
    # or verified); otherwise (the plain method, unverified low precision) it runs a float32 unablated pass of
    # its own, exact as the judge is.
    taps = decomposer is not None and sweep.float32_trunk

    def compute(batch: Batch) -> PendingBatch | store.BatchResult:
        """Every pending pair of one batch, on the device; its copy to the host is queued, not awaited."""
        if batch.pixel_values is None:  # every image of the batch failed to load: record the errors only
            return store.BatchResult.failed(batch.errors, batch.attempted)
        tap = decomposer.tap() if taps else None  # shown the unablated pass
        swept = sweep(batch.pixel_values, tap)  # (n, A, E) embeddings, verified in float32 below float32
        decomposed = None
        if decomposer is not None:
            decomposed = decomposer.decomposed(tap.result if tap is not None else decomposer.batch(batch.pixel_values))
        attributed = None
        if attributor is not None:  # its own float32 pass with gradients; M's prompts from the sweep's baseline
            pairs = sweep_pairs(swept.embeddings, swept.logits, scoring.text_norm, scoring.scale)
            attributed = Attributed(attributor.batch(batch.pixel_values, pairs), work.estimate_ids, labels)
        truth = truth_matrix([r.labels for r in batch.records], prompt_labels)
        return score_batch(scoring, [r.image_id for r in batch.records], truth, swept.embeddings, swept.logits,
                           batch.errors, batch.attempted, swept.verified, decomposed, attributed)

    def hand_over(item: PendingBatch | store.BatchResult) -> None:
        result = item.result() if isinstance(item, PendingBatch) else item
        check_finite(result, prep.ablations, clip.name)  # on the host copy: no wait for the device
        writer.put(result)
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
