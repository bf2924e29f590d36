"""The store's batches of results: what one batch of a run produced (``BatchResult``) and the one
transaction that commits it (``write_batch``): scores, selections, embeddings, errors, and with them the
batch's decomposition and attribution rows. ``compute.store`` re-exports every name here: callers write
through ``store.write_batch``. Values are bound as Arrow tables registered for one statement; table names
are this module's own, never user text.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import datetime

import duckdb
import numpy as np
import pyarrow as pa

from compute.storefile import transaction


@dataclass
class Selection:
    """What each (image, ablation) of a batch picked (made by ``compute.scoring.select``).

    n images, A ablations, P prompts.
    """

    logits: np.ndarray  # (n, A, P) float32
    probs: np.ndarray  # (n, A, P) float32: softmax over the run's prompts
    prompt_id: np.ndarray  # (n, A) int16: the argmax prompt
    correct: np.ndarray  # (n, A) bool
    confidence: np.ndarray  # (n, A) float32: probability of the selected prompt
    margin: np.ndarray  # (n, A) float32: top logit minus the second; NaN (stored NULL) with one prompt
    score_baseline: np.ndarray  # (n, A) float32
    # (n, A) int8, an index into VERIFIED: why a low-precision run's pair holds float32 values (0: it holds the
    # run's dtype's); None: none does (a float32 run, rescore)
    verified: np.ndarray | None = None


# selection_t.verified, by the code compute.precision gives each pair: NULL, the pair was computed in the
# run's dtype (every pair of a float32 run); else the pair was computed again in float32 and holds those
# values: "baseline" (the unablated pass, the judge of score_baseline), "sample" (the images the rounding
# error is measured on), "margin" (its top two prompts were within the bound of the rounding error).
VERIFIED = (None, "baseline", "sample", "margin")


@dataclass
class DecompositionRows:
    """The decomposition of a batch's images (compute.decomposition), n images, C components, A' non-baseline
    ablations, P prompts, E the joint space's width."""

    norm: np.ndarray  # (n,) float32: |e|, the unablated embedding's norm
    shares: np.ndarray  # (n, C, P) float32: each component's share of each prompt's logit (baseline)
    direct: np.ndarray  # (n, A', P) float32: the direct effect of each ablation on each prompt's logit
    direct_ablation_ids: np.ndarray  # (A',) int16
    vectors: np.ndarray | None = None  # (n, C, E) T(c) / |e| in vector_dtype; None: not kept
    direct_vectors: np.ndarray | None = None  # (n, A', E) the direct change of the embedding / |e|
    vector_dtype: str = "none"  # float32 | float16 | none


@dataclass
class AttributionRows:
    """The attribution of a batch's images (compute.attribution), n images, K estimates."""

    estimate_ids: np.ndarray  # (K,) int16: estimate_t ids of the columns
    specs: list[str]  # the specs the columns cover: each image gets an attributed_t row per spec
    estimate: np.ndarray  # (n, K) float32
    metric: np.ndarray  # (n,) float32: M on the unablated pass
    pairs: np.ndarray  # (n, 2) int16: the prompts M compares (selected, second)


@dataclass
class BatchResult:
    """Everything one batch produced, ready to write."""

    image_ids: np.ndarray  # (n,) int64: the images that decoded
    ablation_ids: np.ndarray  # (A,) int16
    selection: Selection | None  # None when no image of the batch decoded (or only decomposed, see below)
    embeddings: np.ndarray | None  # (n, A, E) in the run's embedding dtype, or None
    errors: list[tuple[int, str, str]]  # (image_id, stage, message) for images that failed
    attempted: list[int]  # every image id the batch tried, so earlier errors of retried images clear
    # The images' decomposition, committed with them; alone (selection None) for images decomposed after
    # their pairs were (a run whose decomposition was enabled on resume).
    decomposition: DecompositionRows | None = None
    # The images' attribution, committed with them; alone likewise (attribution enabled, or a kind added, on
    # resume).
    attribution: AttributionRows | None = None

    @classmethod
    def failed(cls, errors: list[tuple[int, str, str]], attempted: list[int]) -> BatchResult:
        """A batch none of whose images decoded: its errors only."""
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int16), None, None, errors, attempted)


def for_batch_writes(con: duckdb.DuckDBPyConnection) -> None:
    """Settings of a connection the run's writer thread commits batches through: no progress bar (a long
    checkpoint would print one across the run's own output)."""
    con.execute("SET enable_progress_bar = false")


def write_batch(con: duckdb.DuckDBPyConnection, run_id: int, b: BatchResult, point: str = "sweep") -> None:
    """Commit one batch atomically: scores, selections, embeddings and errors, or nothing. ``point``: the
    kill point inside the transaction (crash tests)."""
    with transaction(con, point):
        if b.attempted:
            con.execute(
                "DELETE FROM error_t WHERE run_id = ? AND stage = 'load' AND list_contains(?, image_id)",
                [run_id, [int(i) for i in b.attempted]],
            )
        if b.selection is not None and len(b.image_ids):
            _insert_rows(con, run_id, b.image_ids, b.ablation_ids, b.selection, b.embeddings)
        if b.decomposition is not None and len(b.image_ids):
            _insert_decomposition(con, run_id, b.image_ids, b.decomposition)
        if b.attribution is not None and len(b.image_ids):
            _insert_attribution(con, run_id, b.image_ids, b.attribution)
        if b.errors:
            con.executemany(
                "INSERT OR REPLACE INTO error_t VALUES (?, ?, ?, ?)",
                [[run_id, i, stage, msg] for i, stage, msg in b.errors],
            )
        con.execute("UPDATE run_t SET updated_at = ? WHERE run_id = ?", [datetime.now(), run_id])


def _insert_rows(con: duckdb.DuckDBPyConnection, run_id: int, image_ids: np.ndarray, ablation_ids: np.ndarray,
                 sel: Selection, embeddings: np.ndarray | None) -> None:
    n, a, p = sel.logits.shape
    image_ids, ablation_ids = image_ids.astype(np.int64), ablation_ids.astype(np.int16)
    rid = np.full(n * a, run_id, np.int32)
    scores = pa.table({
        "run_id": np.full(n * a * p, run_id, np.int32),
        "image_id": np.repeat(image_ids, a * p),
        "ablation_id": np.tile(np.repeat(ablation_ids, p), n),
        "prompt_id": np.tile(np.arange(p, dtype=np.int16), n * a),
        "logit": sel.logits.reshape(-1).astype(np.float32),
        "prob": sel.probs.reshape(-1).astype(np.float32),
    })
    selections = pa.table({
        "run_id": rid,
        "image_id": np.repeat(image_ids, a),
        "ablation_id": np.tile(ablation_ids, n),
        "prompt_id": sel.prompt_id.reshape(-1).astype(np.int16),
        "correct": sel.correct.reshape(-1),
        "prob": sel.confidence.reshape(-1).astype(np.float32),
        "margin": pa.array(sel.margin.reshape(-1).astype(np.float32), from_pandas=True),  # NaN -> NULL
        "score_baseline": sel.score_baseline.reshape(-1).astype(np.float32),
        "verified": verified_names(sel.verified, n * a),
    })
    con.register("batch_scores", scores)
    con.register("batch_selections", selections)
    con.execute("INSERT INTO score_t SELECT * FROM batch_scores")
    con.execute(
        "INSERT INTO selection_t (run_id, image_id, ablation_id, prompt_id, correct, prob, margin, "
        "score_baseline, verified) SELECT * FROM batch_selections"
    )
    con.unregister("batch_scores")
    con.unregister("batch_selections")
    if embeddings is not None:
        emb = pa.table({
            "run_id": rid,
            "image_id": np.repeat(image_ids, a),
            "ablation_id": np.tile(ablation_ids, n),
            "embedding": embedding_blobs(embeddings.reshape(n * a, -1)),
        })
        con.register("batch_embeddings", emb)
        con.execute("INSERT INTO embedding_t SELECT * FROM batch_embeddings")
        con.unregister("batch_embeddings")


def verified_names(codes: np.ndarray | None, rows: int) -> pa.Array:
    """Selection.verified codes (any shape, ``rows`` in all) -> selection_t.verified strings (see VERIFIED)."""
    if codes is None:
        return pa.nulls(rows, pa.string())
    return pa.array(np.array(VERIFIED, dtype=object)[np.asarray(codes).reshape(-1).astype(np.int64)], pa.string())


def _insert(con: duckdb.DuckDBPyConnection, table: str, columns: dict[str, object]) -> None:
    # ``table`` is one of this module's table names, never user text.
    con.register("batch_rows", pa.table(columns))
    con.execute(f"INSERT INTO {table} SELECT * FROM batch_rows")
    con.unregister("batch_rows")


def _insert_decomposition(con: duckdb.DuckDBPyConnection, run_id: int, image_ids: np.ndarray,
                          d: DecompositionRows) -> None:
    n, c, p = d.shares.shape
    a = len(d.direct_ablation_ids)
    ids = image_ids.astype(np.int64)
    abl = d.direct_ablation_ids.astype(np.int16)
    _insert(con, "decomposed_t", {"run_id": np.full(n, run_id, np.int32), "image_id": ids,
                                  "norm": d.norm.astype(np.float32), "vector_dtype": [d.vector_dtype] * n})
    _insert(con, "contribution_t", {
        "run_id": np.full(n * c * p, run_id, np.int32),
        "image_id": np.repeat(ids, c * p),
        "ablation_id": np.zeros(n * c * p, np.int16),
        "component_id": np.tile(np.repeat(np.arange(c, dtype=np.int16), p), n),
        "prompt_id": np.tile(np.arange(p, dtype=np.int16), n * c),
        "logit": d.shares.reshape(-1).astype(np.float32),
    })
    if a:
        _insert(con, "direct_t", {
            "run_id": np.full(n * a * p, run_id, np.int32),
            "image_id": np.repeat(ids, a * p),
            "ablation_id": np.tile(np.repeat(abl, p), n),
            "prompt_id": np.tile(np.arange(p, dtype=np.int16), n * a),
            "direct": d.direct.reshape(-1).astype(np.float32),
        })
    if d.vectors is not None:
        _insert(con, "component_vector_t", {
            "run_id": np.full(n * c, run_id, np.int32), "image_id": np.repeat(ids, c),
            "component_id": np.tile(np.arange(c, dtype=np.int16), n),
            "vector": embedding_blobs(d.vectors.reshape(n * c, -1)),
        })
    if d.direct_vectors is not None and a:
        _insert(con, "direct_vector_t", {
            "run_id": np.full(n * a, run_id, np.int32), "image_id": np.repeat(ids, a),
            "ablation_id": np.tile(abl, n), "vector": embedding_blobs(d.direct_vectors.reshape(n * a, -1)),
        })


def _insert_attribution(con: duckdb.DuckDBPyConnection, run_id: int, image_ids: np.ndarray,
                        a: AttributionRows) -> None:
    n, k = a.estimate.shape
    ids = image_ids.astype(np.int64)
    s = len(a.specs)
    _insert(con, "attributed_t", {
        "run_id": np.full(n * s, run_id, np.int32), "image_id": np.repeat(ids, s),
        "spec": np.tile(np.array(a.specs, dtype=object), n),
        "prompt_id": np.repeat(a.pairs[:, 0].astype(np.int16), s),
        "other_prompt_id": np.repeat(a.pairs[:, 1].astype(np.int16), s),
        "metric": np.repeat(a.metric.astype(np.float32), s),
    })
    _insert(con, "attribution_t", {
        "run_id": np.full(n * k, run_id, np.int32), "image_id": np.repeat(ids, k),
        "estimate_id": np.tile(a.estimate_ids.astype(np.int16), n),
        "estimate": a.estimate.reshape(-1).astype(np.float32),
    })


def embedding_blobs(rows: np.ndarray) -> pa.Array:
    """(rows, E) little-endian floats -> one BLOB per row, as one Arrow array over the same buffer: no
    per-row conversion (DuckDB stores a fixed-size binary as BLOB)."""
    rows = np.ascontiguousarray(rows)
    if rows.dtype.byteorder == ">" or (rows.dtype.byteorder == "=" and sys.byteorder == "big"):
        rows = rows.astype(rows.dtype.newbyteorder("<"))
    width = rows.shape[1] * rows.itemsize
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), rows.shape[0], [None, pa.py_buffer(rows)])
