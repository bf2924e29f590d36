"""A run's life in the store, the same for ``run`` and ``rescore``: create the run or resume it, say which
(image, ablation) pairs are still pending, and once the verb has computed them, the caption stage, the
completion check (with decomposition: every image decomposed, then the TextSpan stage, compute.textspan),
the run's status and its summary table (with attribution, the estimates' quality against the exact effects
where the run holds them, compute.attribution_quality).

Only the middle differs: ``run`` sweeps the vision tower over the pending images (compute.runner), ``rescore``
scores stored embeddings against new prompts (compute.rescore). So when a stored run may be resumed (its
identity, compute.config.Experiment.identity), the one message when it may not, what is pending and when a
run is complete are decided here, once. Callers hold the run's lock (compute.runlock) around all of it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from compute import attribution_quality, significance, store
from compute.ablations import Ablation
from compute.captions import CaptionStats, caption_stage
from compute.config import Experiment
from compute.dataset import ImageRecord
from compute.devices import DtypeChoice
from compute.errors import InputError
from compute.models import LoadedCaptioner, LoadedClip
from compute.textspan import textspan_stage


class ConfigMismatch(InputError):
    """A run of that name is stored with another identity; the message names the keys that differ."""


def new_run(exp: Experiment, images: list[ImageRecord], ablations: list[Ablation], vision: dict | None,
            n_layers: int, parent: store.RunRow | None = None, dtype: DtypeChoice | None = None) -> store.NewRun:
    """Run ``exp.name`` as it would be created: its resolved config (with its identity, ``vision``, the
    tower's summary, compute.models.model_summary, and ``dtype``, what it computes in and why), images, prompts
    and ablations. ``parent``: the run whose stored embeddings a rescored run reads (its dtype record is
    kept: those embeddings were computed so), and whose unreadable images it carries."""
    config = json.loads(exp.to_json())
    config["identity"] = exp.identity()
    config["vision"] = vision
    if dtype is not None:
        config["dtype"] = dtype.record()
    if parent is not None:
        config["rescored_from"] = parent.run
        if "dtype" in parent.config:
            config["dtype"] = parent.config["dtype"]
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
                                 run.row.embedding_run_id, progress,
                                 prefixes={p.text: p.texts[0] for p in exp.prompts if p.ensemble})
        if captions.keys:
            echo(captions.describe())
    decomposed = _decomposition_stage(exp, run, clip, echo)
    with store.connect(db) as con:
        store.for_batch_writes(con)  # no progress bar of DuckDB's across the summary
        attributed = _attribution_done(con, exp, run)
        counts = store.attributed_counts(con, run.run_id)
        estimated = store.estimated_and_exact(con, run.run_id) if counts else {}
        done = store.done_pairs(con, run.run_id)
        failed = store.failed_images(con, run.run_id)
        complete = all((r.image_id, a) in done for r in run.images if r.image_id not in failed
                       for a in range(len(run.ablations)))
        if captioner is not None:
            complete = complete and store.uncaptioned(con, run.run_id) == 0
        complete = complete and decomposed and attributed
        store.set_status(con, run.run_id, "complete" if complete else "running")
        rows = store.summary(con, run.run_id)
        verified = store.verified_counts(con, run.run_id)
    if failed:
        echo(f"{len(failed)} image(s) could not be read and were skipped (see the errors view)")
    if (line := precision_line(run.row.config, verified)) is not None:
        echo(line)
    echo(format_summary(rows))
    lines = attribution_quality.summary_lines(estimated, counts)
    if lines:
        echo("")  # apart from the table: its rows end at the first blank line
    for line in lines:
        echo(line)
    return Ending(complete, captions)


def _attribution_done(con: object, exp: Experiment, run: OpenRun) -> bool:
    """Whether every readable image has the estimates of every spec asked for (True without attribution, and
    with one prompt: then M is undefined and nothing is estimated)."""
    kinds = exp.attribution.kinds
    if not kinds or len(exp.prompts) < 2:
        return True
    have = store.attributed(con, run.run_id)
    failed = store.failed_images(con, run.run_id)
    return all(set(kinds) <= have.get(r.image_id, set()) for r in run.images if r.image_id not in failed)


def precision_line(config: dict, verified: dict[str | None, int]) -> str | None:
    """One line on a low-precision run: the dtype it computes in and why, and how many of its stored pairs
    hold float32 values (store.verified_counts, by reason). None for a float32 run."""
    record = config.get("dtype") or {}
    used = record.get("used", config.get("model", {}).get("dtype", "float32"))
    if used == "float32":
        return None
    total = sum(verified.values())
    exact = total - verified.get(None, 0)
    why = f" ({record['asked']}: {record['why']})" if record.get("asked") == "auto" else ""
    if config.get("rescored_from"):
        return (f"precision: the stored {used} embeddings of run {config['rescored_from']!r}{why}, scored against "
                f"the new prompts without verification")
    parts = ", ".join(f"{verified[r]:,} {r}" for r in store.VERIFIED[1:] if verified.get(r))
    share = f" ({exact / total:.1%})" if total else ""
    return (f"precision: {used}{why}, verified in float32: {exact:,} of {total:,} pairs{share} hold float32 "
            f"values{f' ({parts})' if parts else ''}")


SIG_MARK = "*"  # after a change in accuracy that is significant (analysis.tables.MARK on the pages)


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
    """The per-ablation table printed at the end of a run (store.summary's rows): columns as wide as their
    longest cell, the change in accuracy against baseline marked by the dashboard's rule (McNemar's test,
    Holm-adjusted over the run's ablations, compute.significance)."""
    has_captions = any(r[4] is not None for r in rows)
    tests = [significance.mcnemar(r[5], r[6]) if not r[7] and r[1] else None for r in rows]
    p_holm = significance.holm([t[1] if t else math.nan for t in tests])
    base = next((r[2] for r in rows if r[7]), None)
    head = ["ablation", "images", "accuracy", "change", "sig", "p (Holm)", "score_baseline"]
    if has_captions:
        head.append("caption_score")
    table = [head]
    for r, test, p in zip(rows, tests, p_holm, strict=True):
        ablation, n, acc, score, cap = r[:5]
        change = None if test is None or acc is None or base is None else acc - base
        mark = SIG_MARK if change is not None and significance.verdict(change, p) else ""
        cells = [str(ablation), str(n), _fmt(acc), "" if change is None else f"{change:+.4f}", mark,
                 "" if test is None else _p(p), _fmt(score)]
        if has_captions:
            cells.append(_fmt(cap))
        table.append(cells)
    widths = [max(len(row[k]) for row in table) for k in range(len(head))]
    lines = ["  ".join(c.ljust(w) if k == 0 else c.rjust(w) if k != 4 else c.ljust(w)
                       for k, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip() for row in table]
    lines.insert(1, "-" * len(lines[0]))
    lines.append(f"{SIG_MARK} accuracy differs from baseline's: McNemar's paired test, Holm-adjusted p < "
                 f"{significance.ALPHA} over the run's ablations (the dashboard's rule)")
    return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _p(p: float) -> str:
    return "-" if math.isnan(p) else "<0.001" if p < 0.001 else f"{p:.3f}"
