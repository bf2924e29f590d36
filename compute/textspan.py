"""TextSpan (Gandelsman, Efros and Steinhardt, ICLR 2024): each head described by the few texts whose
directions in the joint space explain most of the variance of its direct contributions across a run's images.

For one head: stack its direct contributions T(c) / |e| over the run's images, (n, E), and centre them;
the candidate directions are the normalised text embeddings of a pool, projected onto the span of the data's
top singular vectors (at most ``SUBSPACE`` of them, as the reference implementation does); then greedily, for
``rank`` steps: pick the candidate whose projection of the data has the largest standard deviation, remove its
direction from the data (reconstruction += the part along it, remainder -= the same) and from every candidate
(orthogonalise). The chosen directions are orthogonal, and at every step reconstruction + remainder is the
centred data. A text's ``variance`` is the share of the head's total variance its direction removed.

The pool (``text_pool``): the run's prompts, the captions of the run's images when its dataset has a captions
file, and a general list of short descriptions shipped with the project (data/text_pool.txt), duplicates
dropped, in that order. Everything is deterministic (float64, ties to the first text).

The stage (``textspan_stage``) runs after the sweep, from stored vectors, in the run's finish
(compute.lifecycle), and writes ``head_description_t`` (the ``head_descriptions`` view) in one transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compute import store
from compute.models import LoadedClip
from compute.scoring import text_embeddings

POOL_FILE = Path(__file__).resolve().parents[1] / "data" / "text_pool.txt"
SUBSPACE = 80  # the reference implementation's rank of the head's span (its --w_ov_rank for ViT-B)
EPS = 1e-12


@dataclass
class TextSpan:
    """One head's description: the chosen texts in order, each with its share of the head's variance, and its
    direction (unit, in the joint space)."""

    texts: list[str]
    variances: list[float]
    directions: np.ndarray  # (steps, E)


def textspan(data: np.ndarray, candidates: np.ndarray, texts: list[str], rank: int, subspace: int = SUBSPACE,
             trace: Callable[[np.ndarray, np.ndarray, np.ndarray], None] | None = None) -> TextSpan:
    """data: (n, E) a head's contributions over the images; candidates: (T, E) the pool's normalised text
    embeddings, in the order of ``texts``. At most ``rank`` steps (fewer when the candidates run out).
    ``trace(original, reconstruction, remainder)``: called after every step (tests)."""
    data = np.asarray(data, np.float64)
    data = data - data.mean(axis=0, keepdims=True)  # (n, E) centred
    original = data.copy()
    total = float((data**2).sum()) / max(1, len(data))  # the head's total variance (sum over axes)
    _, s, vh = np.linalg.svd(data, full_matrices=False)
    k = min(subspace, int((s > s[0] * 1e-9).sum()) if len(s) and s[0] > 0 else 0)
    basis = vh[:k]  # (k, E) orthonormal rows: the span of the head's largest directions
    cands = np.asarray(candidates, np.float64) @ basis.T @ basis  # (T, E) projected onto that span
    remainder = data.copy()
    reconstruction = np.zeros_like(data)
    chosen, variances, directions = [], [], []
    for _ in range(min(rank, len(texts))):
        norms = np.linalg.norm(cands, axis=1)
        alive = norms > EPS
        if not alive.any():
            break
        spread = (remainder @ cands.T).std(axis=0)  # (T,) how much of the data each candidate carries
        spread[~alive] = -1.0
        best = int(np.argmax(spread))  # the first on ties
        u = cands[best] / norms[best]  # (E,) unit
        along = remainder @ u  # (n,)
        part = np.outer(along, u)
        reconstruction += part
        remainder -= part
        cands = cands - np.outer(cands @ u, u)  # every candidate orthogonal to the chosen direction
        chosen.append(texts[best])
        variances.append(float(along.var()) / total if total > 0 else 0.0)
        directions.append(u)
        if trace is not None:
            trace(original, reconstruction.copy(), remainder.copy())
    e = data.shape[1]
    return TextSpan(chosen, variances, np.array(directions).reshape(-1, e))


# --------------------------------------------------------------------------------------------------
# The pool and the stage.


def shipped_pool() -> list[str]:
    """The general descriptions shipped with the project, one per line (# comments and blank lines skipped)."""
    lines = POOL_FILE.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def image_captions(captions_file: Path | None, image_ids: set[int]) -> list[str]:
    """The captions of ``image_ids`` in a COCO captions file (none without one), sorted, unique."""
    if captions_file is None or not Path(captions_file).is_file():
        return []
    data = json.loads(Path(captions_file).read_text(encoding="utf-8"))
    found = {" ".join(str(a.get("caption", "")).split()) for a in data.get("annotations", [])
             if a.get("image_id") in image_ids}
    return sorted(c for c in found if c)


def text_pool(prompts: list[str], captions: list[str]) -> list[str]:
    """The run's prompts, its images' captions, the shipped list: first occurrence kept."""
    return list(dict.fromkeys([*prompts, *captions, *shipped_pool()]))


def described_heads(n_layers: int, n_heads: int, layers: int) -> list[tuple[int, int]]:
    """(layer, head) of every head of the last ``layers`` layers."""
    return [(layer, head) for layer in range(max(1, n_layers - layers + 1), n_layers + 1) for head in range(n_heads)]


def textspan_stage(db: Path, row: store.RunRow, clip: LoadedClip, prompts: list[str], captions_file: Path | None,
                   layers: int, texts: int, echo: Callable[[str], None] = print) -> bool:
    """Describe the heads of the last ``layers`` layers of run ``row`` from its stored vectors (those of its
    embedding run), one layer's vectors in memory at a time; skipped when every such head already has ``texts``
    descriptions (a head whose vectors span fewer directions gets fewer, and is described again next time:
    cheap, and the same). Returns whether the stage is done: True also when the run keeps no vectors (there is
    nothing to describe them from)."""
    with store.connect(db, read_only=True) as con:
        components = store.run_components(con, row.run_id)
        heads = {(layer, head): cid for cid, kind, layer, head in components if kind == "head"}
        n_layers = max((layer for layer, _ in heads), default=0)
        n_heads = max((head for _, head in heads), default=-1) + 1
        wanted = described_heads(n_layers, n_heads, layers) if layers and texts else []
        counts: dict[tuple[int, int], int] = {}
        for layer, head, *_ in store.head_descriptions(con, row.run_id):
            counts[(layer, head)] = counts.get((layer, head), 0) + 1
        if set(counts) == set(wanted) and all(counts[h] == texts for h in wanted):
            return True
        image_ids = sorted(store.decomposed_images(con, row.run_id))
        kept = store.decomposed(con, row.embedding_run_id, image_ids)
    if wanted and (not image_ids or len(kept) < len(image_ids) or any(d == "none" for _, d in kept.values())):
        echo("TextSpan: not every image of the run kept its component vectors (decomposition.vectors = 'none'): "
             "heads not described")
        return True
    rows = []
    if wanted:
        pool = text_pool(prompts, image_captions(captions_file, set(image_ids)))
        candidates = text_embeddings(clip, pool).cpu().numpy()  # (T, E) normalised
        for layer in sorted({layer for layer, _ in wanted}):
            chosen = [h for h in wanted if h[0] == layer]
            with store.connect(db, read_only=True) as con:
                vectors = store.component_vectors(con, row.embedding_run_id, image_ids, [heads[h] for h in chosen])
            if vectors is None:
                raise RuntimeError(f"run {row.run!r}: component vectors of layer {layer} are missing")
            for k, (_, head) in enumerate(chosen):
                span = textspan(vectors[:, k], candidates, pool, texts)  # (images, E) of this head
                rows += [(layer, head, rank, text, variance) for rank, (text, variance)
                         in enumerate(zip(span.texts, span.variances, strict=True), start=1)]
        echo(f"TextSpan: {len(wanted)} heads described by {texts} texts each, from a pool of {len(pool)} texts")
    with store.connect(db) as con:
        store.save_head_descriptions(con, row.run_id, rows)
    return True
