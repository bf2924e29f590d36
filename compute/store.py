"""Every statement the compute stage runs on its DuckDB store, next to the function that runs it.

The read side of the dashboard keeps its queries in ``analysis/queries.py``; what ``compute`` reads or
writes is here, in sections: runs, stored embeddings, captions, statistics, summaries; the batches of
results a run commits are in ``compute.store_batches``, the decomposition's and attribution's per-component
and per-head records in ``compute.store_heads``, whose names this module re-exports too.
Long because it is that one place. The file itself (location, checks, connection, schema versions) is
``compute.storefile`` (and its path checks in ``compute.storepath``), whose names this module re-exports:
callers open a store with ``store.connect``. Values are always bound with ``?``; identifiers never come
from users.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

import duckdb
import numpy as np
import pyarrow as pa

from compute.errors import InputError
from compute.killpoints import kill_point
from compute.store_batches import (  # noqa: F401 - re-exported: the store's one name for callers
    VERIFIED,
    AttributionRows,
    BatchResult,
    DecompositionRows,
    Selection,
    for_batch_writes,
    write_batch,
)
from compute.store_heads import (  # noqa: F401 - re-exported: the store's one name for callers
    EMBEDDING_DTYPES,
    attributed,
    attributed_counts,
    baseline_logits,
    component_vectors,
    decomposed,
    decomposed_images,
    direct_vectors,
    ensure_components,
    ensure_estimates,
    estimated_and_exact,
    head_descriptions,
    mean_estimates,
    run_components,
    save_head_descriptions,
)
from compute.storefile import (  # noqa: F401 - re-exported: the store's one name for callers
    LOCK_TIMEOUT_S,
    MARKER,
    MIGRATIONS,
    SCHEMA_VERSION,
    StoreKind,
    check_store,
    connect,
    ensure_schema,
    identify,
    transaction,
)
from compute.storepath import (  # noqa: F401 - re-exported likewise
    DB_ENV,
    DEFAULT_DB_TEXT,
    check_path,
    default_db,
    io_cause,
    resolve_db,
)

# --------------------------------------------------------------------------------------------------
# Runs.


@dataclass
class RunRow:
    run_id: int
    run: str
    model: str
    status: str
    config: dict
    config_hash: str
    n_layers: int
    n_images: int
    embedding_dtype: str
    parent_run: str | None
    embedding_run_id: int


FIND_RUN = """
SELECT run_id, run, model, status, config, config_hash, n_layers, n_images, embedding_dtype, parent_run,
       embedding_run_id
FROM run_t WHERE run = ?
"""


def find_run(con: duckdb.DuckDBPyConnection, name: str) -> RunRow | None:
    row = con.execute(FIND_RUN, [name]).fetchone()
    if row is None:
        return None
    values = list(row)
    values[4] = json.loads(values[4])
    return RunRow(*values)


DATABASE_FILE = "SELECT path FROM duckdb_databases() WHERE database_name = current_database()"


def require_run(con: duckdb.DuckDBPyConnection, name: str) -> RunRow:
    """Run ``name``; its absence is the input's fault, said once for every verb: the store's file and its runs."""
    row = find_run(con, name)
    if row is None:
        path = con.execute(DATABASE_FILE).fetchone()
        names = ", ".join(sorted(r["run"] for r in list_runs(con))) or "none"
        raise InputError(f"no run named {name!r} in {path[0] if path else 'the store'} (runs: {names})")
    return row


INSERT_RUN = """
INSERT INTO run_t (run_id, run, model, created_at, updated_at, status, config, config_hash, n_layers,
                   n_images, embedding_dtype, parent_run, embedding_run_id)
SELECT COALESCE(MAX(run_id), 0) + 1, ?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?,
       COALESCE(?, COALESCE(MAX(run_id), 0) + 1) FROM run_t
RETURNING run_id
"""


@dataclass
class NewRun:
    name: str
    model: str
    config_json: str
    config_hash: str
    n_layers: int
    embedding_dtype: str
    images: list  # compute.dataset.ImageRecord
    prompts: list  # compute.prompts.Prompt
    ablations: list  # compute.ablations.Ablation
    parent_run: str | None = None
    embedding_run_id: int | None = None  # None: the run keeps its own embeddings
    errors_from: int | None = None  # a rescored run's parent: its unreadable images are not pending here either


COPY_LOAD_ERRORS = """
INSERT INTO error_t SELECT ?, image_id, stage, message FROM error_t WHERE run_id = ? AND stage = 'load'
"""


def create_run(con: duckdb.DuckDBPyConnection, new: NewRun) -> int:
    """Insert a run with its images, prompts and ablations (and the load errors it carries), in one
    transaction. Returns run_id."""
    now = datetime.now()
    with transaction(con, "create"):
        (run_id,) = con.execute(
            INSERT_RUN,
            [new.name, new.model, now, now, new.config_json, new.config_hash, new.n_layers,
             len(new.images), new.embedding_dtype, new.parent_run, new.embedding_run_id],
        ).fetchone()
        images = pa.table({
            "run_id": pa.array([run_id] * len(new.images), pa.int32()),
            "image_id": pa.array([r.image_id for r in new.images], pa.int64()),
            "file_name": [r.file_name for r in new.images],
            "path": [r.stored_path for r in new.images],  # empty for a file outside the images folder
            "labels": pa.array([list(r.labels) for r in new.images], pa.list_(pa.string())),
        })
        con.register("new_images", images)
        con.execute("INSERT INTO image_t SELECT * FROM new_images")
        con.unregister("new_images")
        con.executemany(
            "INSERT INTO prompt_t VALUES (?, ?, ?, ?)",
            [[run_id, i, p.text, p.label] for i, p in enumerate(new.prompts)],
        )
        con.executemany(
            "INSERT INTO ablation_t (run_id, ablation_id, ablation, kind, layers, heads, target) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [[run_id, i, a.label, a.kind, list(a.layers), list(a.heads), a.target or None]
             for i, a in enumerate(new.ablations)],
        )
        if new.errors_from is not None:
            con.execute(COPY_LOAD_ERRORS, [run_id, new.errors_from])
    return run_id


def set_status(con: duckdb.DuckDBPyConnection, run_id: int, status: str) -> None:
    con.execute("UPDATE run_t SET status = ?, updated_at = ? WHERE run_id = ?", [status, datetime.now(), run_id])


DELETE_RUN = [
    "DELETE FROM attribution_t WHERE run_id = ?",
    "DELETE FROM attributed_t WHERE run_id = ?",
    "DELETE FROM estimate_t WHERE run_id = ?",
    "DELETE FROM contribution_t WHERE run_id = ?",
    "DELETE FROM direct_t WHERE run_id = ?",
    "DELETE FROM component_vector_t WHERE run_id = ?",
    "DELETE FROM direct_vector_t WHERE run_id = ?",
    "DELETE FROM decomposed_t WHERE run_id = ?",
    "DELETE FROM component_t WHERE run_id = ?",
    "DELETE FROM head_description_t WHERE run_id = ?",
    "DELETE FROM score_t WHERE run_id = ?",
    "DELETE FROM selection_t WHERE run_id = ?",
    "DELETE FROM embedding_t WHERE run_id = ?",
    "DELETE FROM error_t WHERE run_id = ?",
    "DELETE FROM stat_t WHERE run_id = ?",
    "DELETE FROM image_t WHERE run_id = ?",
    "DELETE FROM prompt_t WHERE run_id = ?",
    "DELETE FROM ablation_t WHERE run_id = ?",
    "DELETE FROM run_t WHERE run_id = ?",
]


def delete_run(con: duckdb.DuckDBPyConnection, run_id: int) -> None:
    with transaction(con):
        for sql in DELETE_RUN:
            con.execute(sql, [run_id])
            kill_point("delete")


def embedding_users(con: duckdb.DuckDBPyConnection, run_id: int) -> list[str]:
    """Other runs (made by rescore) that read this run's stored embeddings."""
    rows = con.execute("SELECT run FROM run_t WHERE embedding_run_id = ? AND run_id <> ? ORDER BY run",
                       [run_id, run_id]).fetchall()
    return [r[0] for r in rows]


def run_images(con: duckdb.DuckDBPyConnection, run_id: int) -> list[tuple[int, str, str, list[str]]]:
    return con.execute(
        "SELECT image_id, file_name, path, labels FROM image_t WHERE run_id = ? ORDER BY image_id", [run_id]
    ).fetchall()


def run_ablations(con: duckdb.DuckDBPyConnection, run_id: int) -> list[str]:
    rows = con.execute("SELECT ablation FROM ablation_t WHERE run_id = ? ORDER BY ablation_id", [run_id])
    return [r[0] for r in rows.fetchall()]


DONE_PAIRS = "SELECT image_id, ablation_id FROM selection_t WHERE run_id = ?"


def done_pairs(con: duckdb.DuckDBPyConnection, run_id: int) -> set[tuple[int, int]]:
    return {(int(i), int(a)) for i, a in con.execute(DONE_PAIRS, [run_id]).fetchall()}


def failed_images(con: duckdb.DuckDBPyConnection, run_id: int, stage: str = "load") -> set[int]:
    rows = con.execute("SELECT image_id FROM error_t WHERE run_id = ? AND stage = ?", [run_id, stage])
    return {int(r[0]) for r in rows.fetchall()}


def record_config(con: duckdb.DuckDBPyConnection, run_id: int, key: str, value: object) -> None:
    """Set ``key`` of the run's stored config to ``value`` (a part outside its identity, such as the attribution
    asked for on a resume)."""
    (text,) = con.execute("SELECT config FROM run_t WHERE run_id = ?", [run_id]).fetchone()
    config = json.loads(text)
    if config.get(key) != value:
        config[key] = value
        con.execute("UPDATE run_t SET config = ? WHERE run_id = ?", [json.dumps(config), run_id])


def uncaptioned(con: duckdb.DuckDBPyConnection, run_id: int) -> int:
    """Selections still without a caption, images whose caption stage failed aside."""
    return con.execute(
        "SELECT COUNT(*) FROM selection_t s WHERE s.run_id = ? AND s.caption IS NULL AND s.image_id NOT IN "
        "(SELECT image_id FROM error_t e WHERE e.run_id = s.run_id AND e.stage = 'caption')",
        [run_id],
    ).fetchone()[0]


# --------------------------------------------------------------------------------------------------
# Stored image embeddings (rescore, the caption stage's judge, the Prompt lab).


def decode_embeddings(blobs: list[bytes], dtype: str) -> np.ndarray:
    """BLOBs of one run's embedding_t -> (rows, E) float32."""
    return np.stack([np.frombuffer(b, EMBEDDING_DTYPES[dtype]) for b in blobs]).astype(np.float32)


EMBEDDED_IMAGES = "SELECT DISTINCT image_id FROM embedding_t WHERE run_id = ? AND ablation_id = 0 ORDER BY 1"


def embedded_images(con: duckdb.DuckDBPyConnection, run_id: int) -> list[int]:
    """Images with a stored (unablated) embedding in run ``run_id``'s embedding_t rows."""
    return [int(r[0]) for r in con.execute(EMBEDDED_IMAGES, [run_id]).fetchall()]


EMBEDDINGS = """
SELECT image_id, ablation_id, embedding FROM embedding_t
WHERE run_id = ? AND list_contains(?, image_id) AND (? OR ablation_id = 0)
ORDER BY image_id, ablation_id
"""


def embeddings(con: duckdb.DuckDBPyConnection, run_id: int, image_ids: list[int], dtype: str,
               baseline_only: bool = False) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Stored embeddings of ``image_ids`` (every ablation, or baseline only), ordered by image then ablation.
    -> ([(image_id, ablation_id)], (rows, E) float32)."""
    rows = con.execute(EMBEDDINGS, [run_id, image_ids, not baseline_only]).fetchall()
    if not rows:
        return [], np.zeros((0, 0), np.float32)
    return [(int(i), int(a)) for i, a, _ in rows], decode_embeddings([r[2] for r in rows], dtype)


# --------------------------------------------------------------------------------------------------
# Captions: a cache shared across runs, and the selections' caption columns.


def caption_key(config: dict) -> str | None:
    """The caption cache's key (caption_cache_t.captioner) of a run's captioner with its generation settings,
    from the run's resolved config (compute.config.Experiment.to_json, as stored in run_t); None without a
    captioner. The caption stage and the dashboard both read it here. Batch size is left out: it does not
    change a caption."""
    ref = config.get("model", {}).get("captioner", "none")
    if ref == "none":
        return None
    cfg = config.get("captions", {})
    return json.dumps({"model": ref, "max_new_tokens": cfg.get("max_new_tokens"), "num_beams": cfg.get("num_beams")},
                      sort_keys=True)


PENDING_CAPTIONS = """
SELECT s.image_id, s.prompt_id, p.prompt, i.path
FROM selection_t s
JOIN prompt_t p ON p.run_id = s.run_id AND p.prompt_id = s.prompt_id
JOIN image_t i ON i.run_id = s.run_id AND i.image_id = s.image_id
WHERE s.run_id = ? AND s.caption IS NULL
GROUP BY ALL
ORDER BY p.prompt, s.image_id
"""


def pending_captions(con: duckdb.DuckDBPyConnection, run_id: int) -> list[tuple[int, int, str, str]]:
    """Distinct (image_id, prompt_id, prefix, image path) whose selections have no caption yet."""
    return con.execute(PENDING_CAPTIONS, [run_id]).fetchall()


CACHED_CAPTIONS = """
SELECT c.image, c.prefix, c.caption FROM caption_cache_t c
WHERE c.captioner = ? AND list_contains(?, c.image)
"""


def cached_captions(con: duckdb.DuckDBPyConnection, key: str, paths: list[str]) -> dict[tuple[str, str], str]:
    """{(image path, prefix): caption} already generated by captioner ``key`` for these images."""
    return {(img, prefix): text for img, prefix, text in con.execute(CACHED_CAPTIONS, [key, paths]).fetchall()}


def add_captions(con: duckdb.DuckDBPyConnection, key: str, rows: list[tuple[str, str, str]],
                 errors: list[tuple[int, int, str]], run_id: int) -> None:
    """Cache (image path, prefix, caption) rows of captioner ``key`` and record (image_id, message) caption
    errors of ``run_id``, in one transaction."""
    with transaction(con, "caption"):
        con.executemany("INSERT OR IGNORE INTO caption_cache_t VALUES (?, ?, ?, ?)",
                        [[key, path, prefix, text] for path, prefix, text in rows])
        if errors:
            con.executemany("INSERT OR REPLACE INTO error_t VALUES (?, ?, 'caption', ?)",
                            [[run_id, image_id, message] for image_id, message in errors])


FILL_CAPTIONS = """
UPDATE selection_t SET caption = f.caption, caption_score = f.caption_score
FROM filled f
WHERE selection_t.run_id = ? AND selection_t.image_id = f.image_id AND selection_t.prompt_id = f.prompt_id
"""


def fill_captions(con: duckdb.DuckDBPyConnection, run_id: int, filled: pa.Table) -> None:
    """Set caption and caption_score of every selection of ``run_id`` matching a row (image_id, prompt_id,
    caption, caption_score) of ``filled``, in one transaction."""
    with transaction(con, "caption-fill"):
        con.register("filled", filled)
        con.execute(FILL_CAPTIONS, [run_id])
        con.unregister("filled")


SELECTED_PROMPTS = """
SELECT i.path, p.prompt FROM selection_t s
JOIN image_t i ON i.run_id = s.run_id AND i.image_id = s.image_id
JOIN prompt_t p ON p.run_id = s.run_id AND p.prompt_id = s.prompt_id
WHERE s.run_id = ? ORDER BY s.image_id, s.ablation_id
"""


def selected_prompts(con: duckdb.DuckDBPyConnection, run_id: int) -> list[tuple[str, str]]:
    """(image path, selected prompt) of every (image, ablation) of the run (the captions bench)."""
    return con.execute(SELECTED_PROMPTS, [run_id]).fetchall()


# --------------------------------------------------------------------------------------------------
# Dataset statistics (mean attention outputs).


def save_stats(con: duckdb.DuckDBPyConnection, run_id: int, name: str, stats: dict[int, np.ndarray]) -> None:
    with transaction(con, "mean-save"):
        for layer, arr in stats.items():
            arr = np.ascontiguousarray(arr, np.float32)
            con.execute(
                "INSERT OR REPLACE INTO stat_t VALUES (?, ?, ?, ?, ?)",
                [run_id, name, layer, list(arr.shape), arr.tobytes()],
            )


def load_stats(con: duckdb.DuckDBPyConnection, run_id: int, name: str) -> dict[int, np.ndarray]:
    rows = con.execute("SELECT layer, shape, data FROM stat_t WHERE run_id = ? AND name = ?", [run_id, name])
    return {int(layer): np.frombuffer(data, np.float32).reshape(shape).copy() for layer, shape, data in rows.fetchall()}


# --------------------------------------------------------------------------------------------------
# Summaries.

# McNemar's counts against baseline beside the means: images right under baseline only, and under the
# ablation only (the pairs computed under both), so the printed summary marks what the dashboard marks.
SUMMARY = """
WITH base AS (
    SELECT s.image_id, s.correct FROM selection_t s
    WHERE s.run_id = ? AND s.ablation_id = (SELECT MIN(ablation_id) FROM ablation_t
                                            WHERE run_id = s.run_id AND kind = 'baseline')
)
SELECT a.ablation,
       COUNT(s.image_id) AS images,
       AVG(s.correct::DOUBLE) AS accuracy,
       AVG(s.score_baseline) AS score_baseline,
       AVG(s.caption_score) AS caption_score,
       COUNT(*) FILTER (WHERE b.correct AND NOT s.correct) AS only_baseline,
       COUNT(*) FILTER (WHERE s.correct AND NOT b.correct) AS only_ablation,
       a.kind = 'baseline' AS is_baseline
FROM ablation_t a
LEFT JOIN selection_t s ON s.run_id = a.run_id AND s.ablation_id = a.ablation_id
LEFT JOIN base b ON b.image_id = s.image_id
WHERE a.run_id = ?
GROUP BY a.ablation_id, a.ablation, a.kind
ORDER BY a.ablation_id
"""


def summary(con: duckdb.DuckDBPyConnection, run_id: int) -> list[tuple]:
    """Per ablation: (ablation, images, accuracy, mean score_baseline, mean caption_score, only_baseline,
    only_ablation, is_baseline); the last three: McNemar's counts against baseline."""
    return con.execute(SUMMARY, [run_id, run_id]).fetchall()


VERIFIED_COUNTS = "SELECT verified, COUNT(*) FROM selection_t WHERE run_id = ? GROUP BY verified"


def verified_counts(con: duckdb.DuckDBPyConnection, run_id: int) -> dict[str | None, int]:
    """The run's pairs by selection_t.verified ({None: computed in the run's dtype, "margin": ..., ...})."""
    return {reason: int(n) for reason, n in con.execute(VERIFIED_COUNTS, [run_id]).fetchall()}


# Every run with its progress counts: the `list` verb and the dashboard's run picker read this one query.
RUNS = """
SELECT r.run_id, r.run, r.model, r.status, r.created_at, r.updated_at, r.n_images, r.n_layers, r.parent_run,
       -- the vision tower's family (compute.towers); runs stored before SigLIP existed were all CLIP
       COALESCE(json_extract_string(r.config, '$.vision.family'), 'clip') AS family,
       -- the dtype it computed in (compute.devices.DtypeChoice); runs stored before "auto" name it in model.dtype
       COALESCE(json_extract_string(r.config, '$.dtype.used'), json_extract_string(r.config, '$.model.dtype'),
                'float32') AS dtype,
       json_extract_string(r.config, '$.dtype.asked') AS dtype_asked,
       (SELECT COUNT(*) FROM ablation_t a WHERE a.run_id = r.run_id) AS n_ablations,
       (SELECT COUNT(*) FROM prompt_t p WHERE p.run_id = r.run_id) AS n_prompts,
       (SELECT COUNT(*) FROM selection_t s WHERE s.run_id = r.run_id) AS n_done,
       (SELECT COUNT(*) FROM error_t e WHERE e.run_id = r.run_id AND e.stage = 'load') AS n_failed
FROM run_t r
ORDER BY r.created_at DESC, r.run
"""


def list_runs(con: duckdb.DuckDBPyConnection) -> list[dict]:
    """Every run, newest first, as dicts with the columns of RUNS."""
    cur = con.execute(RUNS)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
