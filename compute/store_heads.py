"""The statements of the per-component and per-head records a run keeps beside its results: the
decomposition's components, which images are decomposed, their stored vectors and the TextSpan descriptions;
attribution's estimates, which images are attributed, the baseline logits they start from and the estimates
beside the exact effects. ``compute.store`` re-exports every name here: callers use ``store.X`` as for any
other statement. Values are always bound with ``?``.
"""

from __future__ import annotations

import duckdb
import numpy as np

from compute.storefile import transaction

# How a stored vector's blob is laid out (the image embeddings' blobs too: compute.store reads them with this).
EMBEDDING_DTYPES = {"float32": np.float32, "float16": np.float16}

# --------------------------------------------------------------------------------------------------
# The decomposition: components, which images are decomposed, stored vectors, TextSpan descriptions.


def ensure_components(con: duckdb.DuckDBPyConnection, run_id: int, components: list) -> None:
    """Record the run's components (compute.decomposition.Component, in order) unless they are already."""
    with transaction(con, "components"):
        con.executemany("INSERT OR IGNORE INTO component_t VALUES (?, ?, ?, ?, ?)",
                        [[run_id, i, c.component, c.layer, c.head] for i, c in enumerate(components)])


COMPONENTS = "SELECT component_id, component, layer, head FROM component_t WHERE run_id = ? ORDER BY component_id"


def run_components(con: duckdb.DuckDBPyConnection, run_id: int) -> list[tuple[int, str, int | None, int | None]]:
    """(component_id, component, layer, head) of the run's components, in order; [] when it has none."""
    return con.execute(COMPONENTS, [run_id]).fetchall()


def decomposed_images(con: duckdb.DuckDBPyConnection, run_id: int) -> set[int]:
    return {int(r[0]) for r in con.execute("SELECT image_id FROM decomposed_t WHERE run_id = ?", [run_id]).fetchall()}


DECOMPOSED = """
SELECT image_id, norm, vector_dtype FROM decomposed_t WHERE run_id = ? AND list_contains(?, image_id)
ORDER BY image_id
"""


def decomposed(con: duckdb.DuckDBPyConnection, run_id: int, image_ids: list[int]) -> dict[int, tuple[float, str]]:
    """{image_id: (|e|, vector dtype)} of those ``image_ids`` that are decomposed."""
    return {int(i): (float(norm), dtype) for i, norm, dtype in con.execute(DECOMPOSED, [run_id, image_ids]).fetchall()}


COMPONENT_VECTORS = """
SELECT v.image_id, v.component_id, v.vector, d.vector_dtype FROM component_vector_t v
JOIN decomposed_t d ON d.run_id = v.run_id AND d.image_id = v.image_id
WHERE v.run_id = ? AND list_contains(?, v.image_id) AND list_contains(?, v.component_id)
ORDER BY v.image_id, v.component_id
"""

DIRECT_VECTORS = """
SELECT v.image_id, v.ablation_id, v.vector, d.vector_dtype FROM direct_vector_t v
JOIN decomposed_t d ON d.run_id = v.run_id AND d.image_id = v.image_id
WHERE v.run_id = ? AND list_contains(?, v.image_id) AND list_contains(?, v.ablation_id)
ORDER BY v.image_id, v.ablation_id
"""


def _vector_grid(rows: list[tuple], image_ids: list[int], keys: list[int]) -> np.ndarray | None:
    """Rows (image_id, key, blob, dtype) -> (images, keys, E) float32 in the order asked; None when any is missing."""
    if len(rows) != len(image_ids) * len(keys) or not rows:
        return None
    flat = np.stack([np.frombuffer(blob, EMBEDDING_DTYPES[dtype]) for _, _, blob, dtype in rows]).astype(np.float32)
    grid = flat.reshape(len(image_ids), len(keys), -1)
    order_i = np.argsort(np.argsort(image_ids))  # rows come sorted by id; the caller's order may differ
    order_k = np.argsort(np.argsort(keys))
    return grid[order_i][:, order_k]


def component_vectors(con: duckdb.DuckDBPyConnection, run_id: int, image_ids: list[int],
                      component_ids: list[int]) -> np.ndarray | None:
    """T(c) / |e| of ``component_ids`` for ``image_ids`` (run ``run_id``'s own rows: for a rescored run its
    embedding_run_id) -> (images, components, E) float32 in the order given; None when some are not stored."""
    return _vector_grid(con.execute(COMPONENT_VECTORS, [run_id, image_ids, component_ids]).fetchall(), image_ids,
                        component_ids)


def direct_vectors(con: duckdb.DuckDBPyConnection, run_id: int, image_ids: list[int],
                   ablation_ids: list[int]) -> np.ndarray | None:
    """The direct change of the embedding / |e| per (image, ablation), as component_vectors."""
    return _vector_grid(con.execute(DIRECT_VECTORS, [run_id, image_ids, ablation_ids]).fetchall(), image_ids,
                        ablation_ids)


HEAD_DESCRIPTIONS = "SELECT layer, head, rank, text, variance FROM head_description_t WHERE run_id = ? ORDER BY ALL"


def head_descriptions(con: duckdb.DuckDBPyConnection, run_id: int) -> list[tuple[int, int, int, str, float]]:
    return con.execute(HEAD_DESCRIPTIONS, [run_id]).fetchall()


def save_head_descriptions(con: duckdb.DuckDBPyConnection, run_id: int,
                           rows: list[tuple[int, int, int, str, float]]) -> None:
    """Replace the run's TextSpan descriptions by ``rows`` (layer, head, rank, text, variance), in one transaction."""
    with transaction(con, "textspan"):
        con.execute("DELETE FROM head_description_t WHERE run_id = ?", [run_id])
        con.executemany("INSERT INTO head_description_t VALUES (?, ?, ?, ?, ?, ?)",
                        [[run_id, *row] for row in rows])


# --------------------------------------------------------------------------------------------------
# Attribution: the estimates' ablations, which images are attributed, the baseline's logits they start from,
# estimates beside the exact effects (the summary, analysis.attribution), the run's config record.

ESTIMATES = "SELECT estimate_id, spec, ablation FROM estimate_t WHERE run_id = ? ORDER BY estimate_id"


def ensure_estimates(con: duckdb.DuckDBPyConnection, run_id: int, estimates: list[tuple[str, object]]) -> list[int]:
    """Record the head-level ablations of ``estimates`` ([(spec, compute.ablations.Ablation)], in column order)
    that the run has not recorded yet, with the next ids; -> the estimate id of each, in the order given."""
    with transaction(con, "estimates"):
        known = {label: int(i) for i, _, label in con.execute(ESTIMATES, [run_id]).fetchall()}
        new = [(spec, a) for spec, a in estimates if a.label not in known]
        start = max(known.values(), default=-1) + 1
        if new:
            con.executemany("INSERT INTO estimate_t VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            [[run_id, start + k, spec, a.label, a.kind, a.layers[0], a.heads[0], a.target or None]
                             for k, (spec, a) in enumerate(new)])
        known.update({a.label: start + k for k, (_, a) in enumerate(new)})
    return [known[a.label] for _, a in estimates]


ATTRIBUTED = "SELECT image_id, spec FROM attributed_t WHERE run_id = ?"


def attributed(con: duckdb.DuckDBPyConnection, run_id: int) -> dict[int, set[str]]:
    """{image_id: the specs whose estimates it has}."""
    out: dict[int, set[str]] = {}
    for image_id, spec in con.execute(ATTRIBUTED, [run_id]).fetchall():
        out.setdefault(int(image_id), set()).add(spec)
    return out


ATTRIBUTED_COUNTS = "SELECT spec, COUNT(*) FROM attributed_t WHERE run_id = ? GROUP BY spec ORDER BY MIN(image_id), spec"


def attributed_counts(con: duckdb.DuckDBPyConnection, run_id: int) -> dict[str, int]:
    """{spec: images attributed}; empty when the run has no attribution."""
    specs = [row[1] for row in con.execute(ESTIMATES, [run_id]).fetchall()]
    counts = dict(con.execute(ATTRIBUTED_COUNTS, [run_id]).fetchall())
    return {spec: int(counts[spec]) for spec in dict.fromkeys(specs) if spec in counts}


BASELINE_LOGITS = """
SELECT image_id, prompt_id, logit FROM score_t
WHERE run_id = ? AND ablation_id = 0 AND list_contains(?, image_id)
ORDER BY image_id, prompt_id
"""


def baseline_logits(con: duckdb.DuckDBPyConnection, run_id: int, image_ids: list[int], n_prompts: int) -> np.ndarray:
    """The stored baseline logits of ``image_ids`` (every one must be scored) -> (images, P) float32, in the
    order given."""
    rows = con.execute(BASELINE_LOGITS, [run_id, [int(i) for i in image_ids]]).fetchall()
    grid = {}
    for image_id, prompt_id, logit in rows:
        grid.setdefault(int(image_id), np.zeros(n_prompts, np.float32))[int(prompt_id)] = logit
    return np.stack([grid[int(i)] for i in image_ids]) if len(image_ids) else np.zeros((0, n_prompts), np.float32)


# Every estimate beside its exact effect: M under the ablation (from score_t, the same two prompts) minus M
# under baseline (ablation 0), where the run holds the ablation it stands for. M is made once per (image,
# ablation, spec) in one pass over the score_t rows it needs (joining score_t once per prompt and ablation took
# 27 s on the demo's 2 million rows; this, 0.2 s).
ESTIMATED_AND_EXACT = """
WITH d AS (SELECT image_id, spec, prompt_id, other_prompt_id FROM attributed_t WHERE run_id = ?),
e AS (
    SELECT x.estimate_id, x.spec, x.ablation, x.layer, x.head, a.ablation_id
    FROM estimate_t x JOIN ablation_t a ON a.run_id = x.run_id AND a.ablation = x.ablation
    WHERE x.run_id = ?
),
m AS (
    SELECT s.image_id, s.ablation_id, d.spec,
           SUM(CASE WHEN s.prompt_id = d.prompt_id THEN s.logit ELSE -s.logit END) AS m
    FROM score_t s
    JOIN d ON d.image_id = s.image_id AND (s.prompt_id = d.prompt_id OR s.prompt_id = d.other_prompt_id)
    WHERE s.run_id = ? AND (s.ablation_id = 0 OR s.ablation_id IN (SELECT ablation_id FROM e))
    GROUP BY ALL
)
SELECT e.spec, e.ablation, e.layer, e.head, t.image_id, t.estimate, ma.m - mb.m AS exact
FROM attribution_t t
JOIN e ON e.estimate_id = t.estimate_id
JOIN m ma ON ma.image_id = t.image_id AND ma.ablation_id = e.ablation_id AND ma.spec = e.spec
JOIN m mb ON mb.image_id = t.image_id AND mb.ablation_id = 0 AND mb.spec = e.spec
WHERE t.run_id = ?
ORDER BY e.estimate_id, t.image_id
"""


def estimated_and_exact(con: duckdb.DuckDBPyConnection, run_id: int) -> dict[str, np.ndarray]:
    """Every (image, head-level ablation) with both an estimate and an exact effect, as columns: spec,
    ablation, layer, head, image_id, estimate, exact (numpy arrays, ordered by estimate then image)."""
    found = con.execute(ESTIMATED_AND_EXACT, [run_id] * 4).fetchnumpy()
    return {name: np.asarray(values) for name, values in found.items()}


# Per head-level ablation: its mean estimate over the images attributed, for screening (compute.screen).
MEAN_ESTIMATES = """
SELECT e.spec, e.ablation, e.layer, e.head, AVG(t.estimate::DOUBLE) AS mean, COUNT(*) AS images
FROM attribution_t t JOIN estimate_t e ON e.run_id = t.run_id AND e.estimate_id = t.estimate_id
WHERE t.run_id = ?
GROUP BY ALL
ORDER BY e.spec, mean, e.layer, e.head
"""


def mean_estimates(con: duckdb.DuckDBPyConnection, run_id: int) -> list[tuple[str, str, int, int, float, int]]:
    """(spec, ablation, layer, head, mean estimate, images) of every head-level ablation the run estimated, per
    spec the most harmful (lowest mean) first."""
    return con.execute(MEAN_ESTIMATES, [run_id]).fetchall()
