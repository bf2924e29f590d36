"""What ``run --ray`` runs on the cluster's workers (compute.distributed builds the pipeline around them):
``SweepActor``, the actor that holds the model and the engine and scores (and, with decomposition, decomposes;
with attribution, attributes) each batch, fed by ``compute.ray_decode.decode``, the CPU task that turns a
batch of image files into the model's pixels (a module of its own: a decode worker imports no torch).

Both are the single-process run's own code called from elsewhere: ``decode`` is a decode worker's
``compute.pixels.load`` with the same checked recipe, the actor loads the model through
``compute.models.load_pair`` and runs ``compute.precision.VerifiedSweep`` (the engine, and below float32 its
verification in float32) and ``compute.scoring.score_batch`` as ``runner._sweep`` does, so a batch's numbers
are those of a single-process run. Neither imports ray.

Batches travel between them as Ray Data's numpy batches, {column: array} with one row per image. An image
that cannot be used keeps its row with its message in ``error`` (and zero pixels, whose results the driver
drops), so the driver records it in the errors view as a single-process run does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from compute.ablations import Ablation, parse_spec
from compute.attribution import Attributor
from compute.dataset import ImageRecord
from compute.decomposition import Decomposer
from compute.engine import means_on
from compute.loader import device_table, table_values
from compute.models import load_pair, quiet_transformers
from compute.pixels import Recipe
from compute.precision import VerifiedSweep
from compute.scoring import (
    ATTRIBUTED,
    ATTRIBUTION_FIELDS,
    DECOMPOSED,
    Attributed,
    BatchScoring,
    logit_scale,
    prompt_embeddings,
    score_batch,
    sweep_pairs,
    truth_matrix,
)


@dataclass(frozen=True)
class SweepPlan:
    """Everything an actor needs, sent from the driver once (pickled): no path here is opened by the driver
    alone, so the model reference must be a hub id or a path every node sees."""

    model: str  # hub id or a path every node sees
    device: str  # auto | cpu | cuda | mps, resolved on the actor's node
    dtype: str  # as the experiment asks (auto too): resolved on the actor's node, verified there below float32
    ablations: list[Ablation]  # the run's ablations in order
    keep: list[int]  # the ablation ids results come back for: those still pending (compute.runner.SweepWork.keep)
    means: dict[str, dict[int, np.ndarray]]  # {stat: {layer: (tokens, width) float32}}, from the driver's pass
    prompts: list[list[str]]  # per prompt its texts (one, or an ensemble's: compute.prompts.Prompt.texts)
    embeddings: str  # the run's embedding dtype: float32 | float16 | none
    recipe: Recipe  # checked on the driver against the model's image processor
    threads: int = 1  # torch CPU threads per actor (its share of the node's CPUs)
    decomposition: str = ""  # "" without; else the vectors' dtype kept (compute.config.DecompositionConfig)
    attribution: tuple[str, ...] = ()  # the specs attributed (compute.attribution), () without
    estimate_ids: tuple[int, ...] = ()  # the estimate_t ids of their columns


def input_rows(records: list[ImageRecord], prompt_labels: list[str]) -> list[dict[str, object]]:
    """The pipeline's input, one row per pending image: where to read it, and which prompts are right for it
    (truth: (P,) bool, as compute.scoring.truth_matrix)."""
    truth = truth_matrix([r.labels for r in records], prompt_labels).numpy()  # (n, P)
    return [{"image_id": r.image_id, "file_name": r.file_name, "path": str(r.path),
             "root": "" if r.root is None else str(r.root), "truth": truth[k]} for k, r in enumerate(records)]


class SweepActor:
    """Holds the model and the engine; called on each batch of decoded images (Ray Data's actor pool)."""

    def __init__(self, plan: SweepPlan) -> None:
        torch.set_num_threads(max(1, plan.threads))
        quiet_transformers()
        self.plan = plan
        self.clip, fast, _ = load_pair(plan.model, plan.device, plan.dtype)  # float32, and the sweep's dtype
        clip = self.clip
        # (P, E) prompts in float32 (an ensemble: the normalised mean of its texts), once per actor as once per run
        self.scoring = BatchScoring(prompt_embeddings(clip, plan.prompts), logit_scale(clip), plan.keep,
                                    plan.embeddings)
        # the actor verifies its own batches: its first images calibrate its bound
        self.sweep = VerifiedSweep(clip, fast, plan.ablations, plan.means, plan.keep, self.scoring.text_norm,
                                   self.scoring.scale)
        self.table = device_table(plan.recipe, clip.device) if plan.recipe.ship_uint8 else None
        self.decomposer = None
        if plan.decomposition:
            self.decomposer = Decomposer(clip.model, plan.ablations, means_on(plan.means, clip.device, clip.dtype),
                                         self.scoring.text_norm, self.scoring.scale, plan.decomposition)
        self.attributor = None
        if plan.attribution:  # on the float32 model, as in a single-process run
            self.attributor = Attributor(clip.model, [parse_spec(s) for s in plan.attribution],
                                         means_on(plan.means, clip.device, clip.dtype), self.scoring.text_norm,
                                         self.scoring.scale)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A batch of decoded rows -> the selection of every row under the plan's ``keep`` ablations (A' of
        them): logits, probs (n, A', P); prompt_id, correct, confidence, margin, score_baseline (n, A'), and
        verified (n, A') below float32; embeddings (n, A', E) in the run's dtype unless it is "none". A row
        whose image failed is computed on its zero pixels and dropped by the driver: rare, and it keeps every
        batch's columns the same."""
        clip = self.clip
        x = torch.tensor(batch["pixels"], device=clip.device)  # (n, 3, h, w), copied out of Ray's read-only block
        if self.table is not None:
            x = table_values(self.table, x)
        # the decomposition taps the sweep's unablated pass where that is float32's, else runs its own in float32
        tap = self.decomposer.tap() if self.decomposer is not None and self.sweep.float32_trunk else None
        swept = self.sweep(x.float(), tap)  # (n, A, E) embeddings, verified in float32 below float32
        truth = torch.tensor(np.asarray(batch["truth"], bool))  # (n, P)
        ids = [int(i) for i in batch["image_id"]]
        decomposed = None
        if self.decomposer is not None:
            decomposed = self.decomposer.decomposed(tap.result if tap is not None else self.decomposer.batch(x.float()))
        attributed = None
        if self.attributor is not None:
            pairs = sweep_pairs(swept.embeddings, None, self.scoring.text_norm, self.scoring.scale)
            attributed = Attributed(self.attributor.batch(x.float(), pairs), list(self.plan.estimate_ids),
                                    list(self.plan.attribution))
        result = score_batch(self.scoring, ids, truth, swept.embeddings, verified=swept.verified,
                             decomposition=decomposed, attribution=attributed).result()
        columns = {k: v for k, v in vars(result.selection).items() if v is not None}
        out = {"image_id": batch["image_id"], "error": batch["error"], **columns}
        if result.embeddings is not None:
            out["embeddings"] = result.embeddings
        if result.decomposition is not None:  # its per-image arrays, as columns (DECOMPOSITION_COLUMNS)
            d = result.decomposition
            out.update({DECOMPOSED + name: getattr(d, name) for name in DECOMPOSITION_COLUMNS
                        if getattr(d, name) is not None})
        if result.attribution is not None:  # likewise, "attribution.NAME" (scoring.ATTRIBUTION_FIELDS)
            a = result.attribution
            out.update({ATTRIBUTED + name: getattr(a, name) for name in ATTRIBUTION_FIELDS})
        return out


# The per-image arrays of store.DecompositionRows an actor returns as columns "decomposition.NAME".
DECOMPOSITION_COLUMNS = ("norm", "shares", "direct", "vectors", "direct_vectors")
