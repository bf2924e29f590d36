"""A run's life in the store, the same for ``run`` and ``rescore``: create the run or resume it, say which
(image, ablation) pairs are still pending, and once the verb has computed them, the caption stage, the
completion check (with decomposition: every image decomposed, then the TextSpan stage, compute.textspan),
the run's status and its summary table.

Only the middle differs: ``run`` sweeps the vision tower over the pending images (compute.runner), ``rescore``
scores stored embeddings against new prompts (compute.rescore). So when a stored run may be resumed (its
identity, compute.config.Experiment.identity), the one message when it may not, what is pending and when a
run is complete are decided here, once. Callers hold the run's lock (compute.runlock) around all of it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from compute import store
from compute.ablations import Ablation
from compute.captions import CaptionStats, caption_stage
from compute.config import Experiment
from compute.dataset import ImageRecord
from compute.errors import InputError
from compute.models import LoadedCaptioner, LoadedClip
from compute.textspan import textspan_stage


class ConfigMismatch(InputError):
    """A run of that name is stored with another identity; the message names the keys that differ."""


def new_run(exp: Experiment, images: list[ImageRecord], ablations: list[Ablation], vision: dict | None,
            n_layers: int, parent: store.RunRow | None = None) -> store.NewRun:
    """Run ``exp.name`` as it would be created: its resolved config (with its identity and ``vision``, the
    tower's summary, compute.models.model_summary), images, prompts and ablations. ``parent``: the run whose
    stored embeddings a rescored run reads, and whose unreadable images it carries."""
    config = json.loads(exp.to_json())
    config["identity"] = exp.identity()
    config["vision"] = vision
    if parent is not None:
        config["rescored_from"] = parent.run
    return store.NewRun(
        name=exp.name, model=exp.model.clip, config_json=json.dumps(config), config_hash=exp.identity_hash(),
        n_layers=n_layers, embedding_dtype=exp.store.embeddings if parent is None else parent.embedding_dtype,
        images=images, prompts=exp.prompts, ablations=ablations,
        parent_run=None if parent is None else parent.run,
        embedding_run_id=None if parent is None else parent.embedding_run_id,
        errors_from=None if parent is None else parent.run_id,
    )


@dataclass
class OpenRun:
    """A run created or resumed by this invocation."""

    row: store.RunRow  # as stored now
    images: list[ImageRecord]  # this invocation's images and ablations: those of the stored run (same identity)
    ablations: list[Ablation]
    done: set[tuple[int, int]]  # (image_id, ablation_id) committed before this invocation

    @property
    def run_id(self) -> int:
        return self.row.run_id

    def pending(self) -> list[ImageRecord]:
        """The images with some pair still to compute."""
        n = len(self.ablations)
        return [r for r in self.images if any((r.image_id, a) not in self.done for a in range(n))]

    def pending_ablations(self, images: list[ImageRecord]) -> list[int]:
        """The ablation ids ``images`` still need: what a sweep or rescore scores and writes for them. An image's
        pairs are committed together (one batch), so it is pending with all of them or none; the primary key of
        selection_t would refuse a second copy anyway."""
        return [a for a in range(len(self.ablations)) if any((r.image_id, a) not in self.done for r in images)]


def create_or_resume(db: Path, new: store.NewRun, echo: Callable[[str], None]) -> OpenRun:
    """Create run ``new.name`` in ``db``, or resume it when the stored one has the same identity (its config
    hash). ConfigMismatch, with nothing written, when it has another."""
    with store.connect(db) as con:
        existing = store.find_run(con, new.name)
        if existing is not None:
            if existing.config_hash != new.config_hash:
                old = existing.config.get("identity", {})
                raise ConfigMismatch(
                    f"run {new.name!r} already exists in {db} with a different configuration (differs in: "
                    f"{_differing(old, json.loads(new.config_json)['identity'])}); give the new run another name "
                    f"(name = ... in the experiment file, --as for rescore) or remove the old run with: "
                    f"python -m compute delete {new.name} --db {db}"
                )
            echo(f"resuming run {new.name!r} in {db}")
        else:
            store.create_run(con, new)
            source = f" (rescored from run {new.parent_run!r})" if new.parent_run else ""
            echo(f"new run {new.name!r} in {db}{source}: {len(new.images)} images x {len(new.ablations)} ablations "
                 f"x {len(new.prompts)} prompts")
        row = store.find_run(con, new.name)
        done = store.done_pairs(con, row.run_id)
    return OpenRun(row, new.images, new.ablations, done)


def _differing(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(keys) or "configuration"


@dataclass
class Ending:
    complete: bool  # every pair of every readable image computed (and captioned, with a captioner)
    captions: CaptionStats | None  # None without a captioner


def finish(exp: Experiment, run: OpenRun, clip: LoadedClip, captioner: LoadedCaptioner | None, progress: bool,
           echo: Callable[[str], None]) -> Ending:
    """After the pending pairs: the caption stage (with a captioner), whether the run is complete, its status,
    and the summary printed."""
    db = exp.store.db
    captions = None
    if captioner is not None:
        # The cache key as the dashboard reads it: from the run's stored config.
        key = store.caption_key(run.row.config)
        captions = caption_stage(db, run.run_id, clip, captioner, exp.captions, key, run.row.embedding_dtype,
                                 run.row.embedding_run_id, progress)
        if captions.keys:
            echo(captions.describe())
    decomposed = _decomposition_stage(exp, run, clip, echo)
    with store.connect(db) as con:
        done = store.done_pairs(con, run.run_id)
        failed = store.failed_images(con, run.run_id)
        complete = all((r.image_id, a) in done for r in run.images if r.image_id not in failed
                       for a in range(len(run.ablations)))
        if captioner is not None:
            complete = complete and store.uncaptioned(con, run.run_id) == 0
        complete = complete and decomposed
        store.set_status(con, run.run_id, "complete" if complete else "running")
        rows = store.summary(con, run.run_id)
    if failed:
        echo(f"{len(failed)} image(s) could not be read and were skipped (see the errors view)")
    echo(format_summary(rows))
    return Ending(complete, captions)


def _decomposition_stage(exp: Experiment, run: OpenRun, clip: LoadedClip, echo: Callable[[str], None]) -> bool:
    """With decomposition enabled: once every readable image is decomposed, the TextSpan stage. Returns
    whether the run's decomposition is all there (True without decomposition)."""
    cfg = exp.decomposition
    if not cfg.enabled:
        return True
    with store.connect(exp.store.db, read_only=True) as con:
        missing = {r.image_id for r in run.images} - store.decomposed_images(con, run.run_id) - \
            store.failed_images(con, run.run_id)
    if missing:
        return False
    return textspan_stage(exp.store.db, run.row, clip, [p.text for p in exp.prompts], exp.dataset.captions,
                          cfg.textspan_layers, cfg.textspan_texts, echo)


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
