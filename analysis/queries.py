"""Every query the dashboard and the figure export run, as named SQL next to the function that runs it
(the read side; what the compute stage reads and writes is in ``compute.store``).

Functions take an open read-only connection (``compute.store.connect(db, read_only=True)``) so a caller
can run several on one short-lived connection; values are bound with ``?``; the only text spliced into
SQL is a fragment from ``analysis.slices`` or an ORDER BY from the ``SORTS`` allow-list. Aggregation
happens in DuckDB: ``score_t`` may hold millions of rows and is only ever read for one image.

Long because it is the one place the dashboard's SQL lives; it reads in sections (runs and their parts,
per-ablation aggregates, one image, slices, pairs of selections, stored embeddings, the decomposition).
"""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pandas as pd

from analysis.slices import EVERYTHING, Slice
from compute import store

Con = duckdb.DuckDBPyConnection

def runs(con: Con) -> pd.DataFrame:
    """Every run, newest first, with its progress counts (the query the `list` verb runs too)."""
    return con.execute(store.RUNS).df()


RUN_CONFIG = "SELECT config FROM run_t WHERE run_id = ?"

RUN_PROVENANCE = """
SELECT run, model, created_at, status, config, config_hash, parent_run FROM run_t WHERE run_id = ?
"""


def run_provenance(con: Con, run_id: int) -> dict:
    """What an exported file says about the run it came from (analysis.provenance): name, model, creation,
    status, resolved config (as a dict) and the experiment's hash."""
    cur = con.execute(RUN_PROVENANCE, [run_id])
    row = dict(zip([d[0] for d in cur.description], cur.fetchone(), strict=True))
    row["config"] = json.loads(row["config"])
    return row

# The caption stage generates each distinct (image, selected prompt) once into the shared cache, then
# fills the selections: progress is the share of the run's pending pairs already in the cache.
CAPTION_PROGRESS = """
WITH needed AS (
    SELECT DISTINCT i.path, p.prompt
    FROM selection_t s
    JOIN image_t i ON i.run_id = s.run_id AND i.image_id = s.image_id
    JOIN prompt_t p ON p.run_id = s.run_id AND p.prompt_id = s.prompt_id
    WHERE s.run_id = ? AND s.caption IS NULL
      AND s.image_id NOT IN (SELECT image_id FROM error_t WHERE run_id = s.run_id AND stage = 'caption')
)
SELECT COUNT(*) AS pending, COUNT(c.caption) AS generated
FROM needed n
LEFT JOIN caption_cache_t c ON c.captioner = ? AND c.image = n.path AND c.prefix = n.prompt
"""


def caption_progress(con: Con, run_id: int) -> tuple[int, int] | None:
    """(captions generated, captions needed) of the run's selections still without one; None when the run
    has no captioner."""
    key = store.caption_key(json.loads(con.execute(RUN_CONFIG, [run_id]).fetchone()[0]))
    if key is None:
        return None
    pending, generated = con.execute(CAPTION_PROGRESS, [run_id, key]).fetchone()
    return int(generated), int(pending)


HAS_EMBEDDINGS = "SELECT COUNT(*) > 0 FROM embedding_t WHERE run_id = ?"


def has_embeddings(con: Con, run: str) -> bool:
    """Whether ``run`` kept image embeddings that the Prompt lab can rescore."""
    row = store.find_run(con, run)
    if row is None or row.embedding_dtype == "none":
        return False
    return bool(con.execute(HAS_EMBEDDINGS, [row.embedding_run_id]).fetchone()[0])


# Layers and heads as plain columns (count, first, "1,2,3"): frames of scalars hash and pickle fast in the
# caches. n_heads = 0 and target = '' for whole-layer ablations without a knockout target.
ABLATIONS = """
SELECT ablation_id, ablation, kind, len(layers) AS n_layers, coalesce(layers[1], 0) AS first_layer,
       array_to_string(layers, ',') AS layers, len(heads) AS n_heads, coalesce(heads[1], -1) AS first_head,
       array_to_string(heads, ',') AS heads, coalesce(target, '') AS target
FROM ablation_t WHERE run_id = ? ORDER BY ablation_id
"""


def ablations(con: Con, run_id: int) -> pd.DataFrame:
    return con.execute(ABLATIONS, [run_id]).df()


def mean_stats(con: Con, run: str, names: list[str]) -> dict[str, dict]:
    """The dataset statistics of ``run`` that mean ablations read ({name: {layer: (tokens, width) array}}),
    from the run that computed its embeddings (itself, or for a rescored run its parent)."""
    row = store.find_run(con, run)
    if row is None:
        return {}
    return {name: store.load_stats(con, row.embedding_run_id, name) for name in names}


ABLATION_ACCURACY = """
SELECT ablation_id, COUNT(*) AS images, AVG(correct::DOUBLE) AS accuracy
FROM selection_t WHERE run_id = ? GROUP BY ablation_id ORDER BY ablation_id
"""


def ablation_accuracy(con: Con, run_id: int) -> pd.DataFrame:
    """Per ablation computed so far: images and accuracy (no intervals: a cheap read for defaults)."""
    return con.execute(ABLATION_ACCURACY, [run_id]).df()


PROMPTS = "SELECT prompt_id, prompt, label FROM prompt_t WHERE run_id = ? ORDER BY prompt_id"


def prompts(con: Con, run_id: int) -> pd.DataFrame:
    return con.execute(PROMPTS, [run_id]).df()


TRUE_LABELS = """
SELECT label, COUNT(*) AS images
FROM (SELECT unnest(labels) AS label FROM image_t WHERE run_id = ?)
GROUP BY label
ORDER BY images DESC, label
"""


def true_labels(con: Con, run_id: int) -> pd.DataFrame:
    """Ground-truth labels of the run's images, most frequent first."""
    return con.execute(TRUE_LABELS, [run_id]).df()


IMAGES = """
SELECT image_id, file_name, array_to_string(labels, ', ') AS labels FROM image_t WHERE run_id = ? ORDER BY image_id
"""


def images(con: Con, run_id: int) -> pd.DataFrame:
    """The run's images, labels joined into one string (a list column pickles 50 times slower)."""
    return con.execute(IMAGES, [run_id]).df()


IMAGE_PATHS = "SELECT image_id, path FROM image_t WHERE run_id = ?"


def image_paths(con: Con, run_id: int) -> dict[int, str]:
    """image_id -> the file the store lists for it in this run: the only files the dashboard opens."""
    return {int(i): str(path) for i, path in con.execute(IMAGE_PATHS, [run_id]).fetchall()}


ERRORS = "SELECT image_id, stage, message FROM error_t WHERE run_id = ? ORDER BY image_id, stage"


def errors(con: Con, run_id: int) -> pd.DataFrame:
    return con.execute(ERRORS, [run_id]).df()


# --------------------------------------------------------------------------------------------------
# Per-ablation aggregates.

SELECTION_MATRIX = """
SELECT s.image_id, s.ablation_id, s.correct::DOUBLE AS accuracy, s.score_baseline, s.caption_score
FROM selection_t s
JOIN image_t i ON i.run_id = s.run_id AND i.image_id = s.image_id
WHERE s.run_id = ? AND ({where})
"""


def selection_matrix(con: Con, run_id: int, where: Slice = EVERYTHING) -> pd.DataFrame:
    """One row per computed (image, ablation) pair of the images ``where`` keeps (an image-level slice)."""
    return con.execute(SELECTION_MATRIX.format(where=where.sql), [run_id, *where.params]).df()


LABEL_ACCURACY = """
SELECT s.ablation_id, l.label, COUNT(*) AS images, AVG(s.correct::DOUBLE) AS accuracy
FROM selection_t s
JOIN (SELECT image_id, unnest(labels) AS label FROM image_t WHERE run_id = ?) l USING (image_id)
WHERE s.run_id = ?
GROUP BY s.ablation_id, l.label
ORDER BY s.ablation_id, l.label
"""


def label_accuracy(con: Con, run_id: int) -> pd.DataFrame:
    """Accuracy per ablation x true label (an image with two labels counts under each)."""
    return con.execute(LABEL_ACCURACY, [run_id, run_id]).df()


# Each image counts once: in the diagonal cell of its selected label when that label is one of its own
# (a right pick), otherwise split equally over the rows of its labels (a wrong pick of a two-label image
# adds 0.5 to each of its two rows). Images without labels form the row "(no label)". So every row sums
# to the images attributed to it, and the whole matrix to the images computed.
NO_LABEL = "(no label)"
CONFUSION = """
WITH picked AS (
    SELECT i.labels, p.label AS selected_label
    FROM selection_t s
    JOIN image_t i ON i.run_id = s.run_id AND i.image_id = s.image_id
    JOIN prompt_t p ON p.run_id = s.run_id AND p.prompt_id = s.prompt_id
    WHERE s.run_id = ? AND s.ablation_id = ?
), cells AS (
    SELECT selected_label AS true_label, selected_label, 1.0 AS weight
    FROM picked WHERE list_contains(labels, selected_label)
    UNION ALL
    SELECT unnest(labels) AS true_label, selected_label, 1.0 / len(labels) AS weight
    FROM picked WHERE NOT list_contains(labels, selected_label) AND len(labels) > 0
    UNION ALL
    SELECT ? AS true_label, selected_label, 1.0 AS weight FROM picked WHERE len(labels) = 0
)
SELECT true_label, selected_label, SUM(weight) AS images
FROM cells
GROUP BY true_label, selected_label
ORDER BY true_label, selected_label
"""


def confusion(con: Con, run_id: int, ablation_id: int) -> pd.DataFrame:
    """Images per true label x selected label under one ablation, each image counted once (see CONFUSION);
    only non-empty cells."""
    return con.execute(CONFUSION, [run_id, ablation_id, NO_LABEL]).df()


# --------------------------------------------------------------------------------------------------
# One image.

IMAGE = "SELECT image_id, file_name, path, labels FROM image_t WHERE run_id = ? AND image_id = ?"


def image(con: Con, run_id: int, image_id: int) -> dict | None:
    row = con.execute(IMAGE, [run_id, image_id]).fetchone()
    if row is None:
        return None
    return dict(zip(("image_id", "file_name", "path", "labels"), row, strict=True))


# score_t is scanned for one image only; rows are written in image order, so DuckDB's zone maps skip
# almost every row group.
IMAGE_SCORES = """
SELECT a.ablation_id, a.ablation, p.prompt_id, p.prompt, p.label, s.logit, s.prob
FROM score_t s
JOIN ablation_t a ON a.run_id = s.run_id AND a.ablation_id = s.ablation_id
JOIN prompt_t p ON p.run_id = s.run_id AND p.prompt_id = s.prompt_id
WHERE s.run_id = ? AND s.image_id = ?
ORDER BY a.ablation_id, p.prompt_id
"""


def image_scores(con: Con, run_id: int, image_id: int) -> pd.DataFrame:
    """Logit and probability of every prompt under every ablation computed for one image."""
    return con.execute(IMAGE_SCORES, [run_id, image_id]).df()


IMAGE_SELECTIONS = """
SELECT a.ablation_id, a.ablation, p.prompt AS selected_prompt, p.label AS selected_label, s.correct,
       s.prob AS confidence, s.margin, s.score_baseline, s.caption, s.caption_score
FROM selection_t s
JOIN ablation_t a ON a.run_id = s.run_id AND a.ablation_id = s.ablation_id
JOIN prompt_t p ON p.run_id = s.run_id AND p.prompt_id = s.prompt_id
WHERE s.run_id = ? AND s.image_id = ?
ORDER BY a.ablation_id
"""


def image_selections(con: Con, run_id: int, image_id: int) -> pd.DataFrame:
    """The selected prompt, its scores and the generated caption under each ablation for one image."""
    return con.execute(IMAGE_SELECTIONS, [run_id, image_id]).df()


# --------------------------------------------------------------------------------------------------
# Slices of selections (the Failures grid, the Export page's CSV and Parquet).

# name -> (ORDER BY, caption). The allow-list of orders a URL may ask for.
SORTS: dict[str, tuple[str, str]] = {
    "margin": ("s.margin ASC NULLS LAST, s.image_id, s.ablation_id", "smallest margin first"),  # near ties
    "-margin": ("s.margin DESC NULLS LAST, s.image_id, s.ablation_id", "largest margin first"),
    "confidence": ("s.prob DESC, s.image_id, s.ablation_id", "most confident first"),
    "-confidence": ("s.prob ASC, s.image_id, s.ablation_id", "least confident first"),
    "image": ("s.image_id, s.ablation_id", "image id"),
}

SLICE_FROM = """
FROM selection_t s
JOIN ablation_t a ON a.run_id = s.run_id AND a.ablation_id = s.ablation_id
JOIN image_t i ON i.run_id = s.run_id AND i.image_id = s.image_id
JOIN prompt_t p ON p.run_id = s.run_id AND p.prompt_id = s.prompt_id
LEFT JOIN selection_t b ON b.run_id = s.run_id AND b.image_id = s.image_id AND b.ablation_id = ?
LEFT JOIN prompt_t bp ON bp.run_id = b.run_id AND bp.prompt_id = b.prompt_id
WHERE s.run_id = ? AND ({where})
"""

SLICE_ROWS = """
SELECT s.image_id, a.ablation, i.file_name, i.labels, p.prompt AS selected_prompt,
       p.label AS selected_label, s.correct, s.prob AS confidence, s.margin, bp.label AS baseline_label,
       b.correct AS baseline_correct, s.score_baseline, s.caption, s.caption_score
""" + SLICE_FROM + """
ORDER BY {order}
LIMIT ? OFFSET ?
"""

SLICE_COUNT = "SELECT COUNT(*) AS rows, COUNT(DISTINCT s.image_id) AS images" + SLICE_FROM

SLICE_IMAGES = "SELECT s.image_id" + SLICE_FROM + "ORDER BY {order}"


def slice_rows(con: Con, run_id: int, baseline_id: int, where: Slice, sort: str = "image",
               limit: int | None = None, offset: int = 0) -> pd.DataFrame:
    """Selections the slice keeps, with image, selected and baseline labels; ``limit`` None is all."""
    order, _ = SORTS[sort]  # KeyError for anything not on the allow-list
    sql = SLICE_ROWS.format(where=where.sql, order=order)
    return con.execute(sql, [baseline_id, run_id, *where.params, limit, offset]).df()


def slice_count(con: Con, run_id: int, baseline_id: int, where: Slice) -> tuple[int, int]:
    """(rows, distinct images) the slice keeps."""
    rows, n_images = con.execute(SLICE_COUNT.format(where=where.sql), [baseline_id, run_id, *where.params]).fetchone()
    return int(rows), int(n_images)


def slice_images(con: Con, run_id: int, baseline_id: int, where: Slice, sort: str = "image") -> list[int]:
    """Image ids of the slice's rows in the grid's order (the Image page's previous / next)."""
    order, _ = SORTS[sort]
    sql = SLICE_IMAGES.format(where=where.sql, order=order)
    return [int(r[0]) for r in con.execute(sql, [baseline_id, run_id, *where.params]).fetchall()]


# --------------------------------------------------------------------------------------------------
# Two selections side by side (two ablations of a run, or two runs over the same images).

# Pairs are the same image: the same id and file name in both runs (two datasets may share ids).
PAIRS = """
SELECT x.image_id, i.labels, x.correct AS correct_a, y.correct AS correct_b, px.label AS selected_a,
       py.label AS selected_b, x.prob AS confidence_a, y.prob AS confidence_b
FROM selection_t x
JOIN selection_t y ON y.image_id = x.image_id AND y.run_id = ? AND y.ablation_id = ?
JOIN image_t i ON i.run_id = x.run_id AND i.image_id = x.image_id
JOIN image_t iy ON iy.run_id = y.run_id AND iy.image_id = y.image_id AND iy.file_name = i.file_name
JOIN prompt_t px ON px.run_id = x.run_id AND px.prompt_id = x.prompt_id
JOIN prompt_t py ON py.run_id = y.run_id AND py.prompt_id = y.prompt_id
WHERE x.run_id = ? AND x.ablation_id = ?
"""

COMPARE_LABELS = """
WITH pairs AS (""" + PAIRS + """)
SELECT label, COUNT(*) AS images, AVG(correct_a::DOUBLE) AS accuracy_a, AVG(correct_b::DOUBLE) AS accuracy_b,
       AVG(correct_b::DOUBLE) - AVG(correct_a::DOUBLE) AS difference
FROM (SELECT unnest(labels) AS label, correct_a, correct_b FROM pairs)
GROUP BY label
ORDER BY label
"""


def compare_labels(con: Con, run_a: int, ablation_a: int, run_b: int, ablation_b: int) -> pd.DataFrame:
    """Per true label, accuracy of A and of B on the images both computed, and B minus A."""
    return con.execute(COMPARE_LABELS, [run_b, ablation_b, run_a, ablation_a]).df()


COMPARE_COUNTS = """
WITH pairs AS (""" + PAIRS + """)
SELECT COUNT(*) AS images,
       COUNT(*) FILTER (WHERE correct_a AND correct_b) AS both_right,
       COUNT(*) FILTER (WHERE correct_a AND NOT correct_b) AS only_a,
       COUNT(*) FILTER (WHERE correct_b AND NOT correct_a) AS only_b,
       COUNT(*) FILTER (WHERE NOT correct_a AND NOT correct_b) AS both_wrong
FROM pairs
"""


def compare_counts(con: Con, run_a: int, ablation_a: int, run_b: int, ablation_b: int) -> dict[str, int]:
    row = con.execute(COMPARE_COUNTS, [run_b, ablation_b, run_a, ablation_a]).fetchone()
    return dict(zip(("images", "both_right", "only_a", "only_b", "both_wrong"), map(int, row), strict=True))


COMPARE_FLIPS = """
WITH pairs AS (""" + PAIRS + """)
SELECT * FROM pairs WHERE correct_a <> correct_b ORDER BY correct_a DESC, image_id LIMIT ?
"""


def compare_flips(con: Con, run_a: int, ablation_a: int, run_b: int, ablation_b: int,
                  limit: int | None = None) -> pd.DataFrame:
    """Images right under one of A and B and wrong under the other (those A gets right first)."""
    return con.execute(COMPARE_FLIPS, [run_b, ablation_b, run_a, ablation_a, limit]).df()


# Two runs over the same images: which runs share images with a run (and label them alike), and per ablation
# both runs have (matched by label), accuracy under each and McNemar's counts, paired on the images.
SHARED_IMAGES = """
WITH mine AS (SELECT image_id, file_name, labels FROM image_t WHERE run_id = ?)
SELECT r.run_id, r.run, r.model, r.n_layers, COUNT(*) AS shared, COUNT(*) FILTER (WHERE i.labels = m.labels) AS same_labels
FROM run_t r
JOIN image_t i ON i.run_id = r.run_id
JOIN mine m ON m.image_id = i.image_id AND m.file_name = i.file_name
WHERE r.run_id <> ?
GROUP BY r.run_id, r.run, r.model, r.n_layers
ORDER BY r.run_id
"""


def shared_images(con: Con, run_id: int) -> pd.DataFrame:
    """Every other run with images in common with ``run_id`` (same id and file name): run_id, run, model,
    n_layers, shared (images), same_labels (of those, labelled alike in both)."""
    return con.execute(SHARED_IMAGES, [run_id, run_id]).df()


RUN_PAIRS = """
SELECT ax.ablation_id, ax.ablation, COUNT(*) AS images,
       AVG(x.correct::DOUBLE) AS accuracy_a, AVG(y.correct::DOUBLE) AS accuracy_b,
       COUNT(*) FILTER (WHERE x.correct AND NOT y.correct) AS only_a,
       COUNT(*) FILTER (WHERE y.correct AND NOT x.correct) AS only_b
FROM selection_t x
JOIN ablation_t ax ON ax.run_id = x.run_id AND ax.ablation_id = x.ablation_id
JOIN ablation_t ay ON ay.run_id = ? AND ay.ablation = ax.ablation
JOIN selection_t y ON y.run_id = ay.run_id AND y.ablation_id = ay.ablation_id AND y.image_id = x.image_id
JOIN image_t i ON i.run_id = x.run_id AND i.image_id = x.image_id
JOIN image_t iy ON iy.run_id = y.run_id AND iy.image_id = y.image_id AND iy.file_name = i.file_name
WHERE x.run_id = ?
GROUP BY ax.ablation_id, ax.ablation
ORDER BY ax.ablation_id
"""


def run_pairs(con: Con, run_a: int, run_b: int) -> pd.DataFrame:
    """Per ablation of run A that run B has too (the same label): images computed under it in both, accuracy
    under each, and the images right only under A (only_a) and only under B (only_b); A's sweep order."""
    return con.execute(RUN_PAIRS, [run_b, run_a]).df()


# --------------------------------------------------------------------------------------------------
# Stored image embeddings (the Embeddings page).

# A deterministic sample of a run's images: the same images whichever ablation is looked at.
SAMPLE_IMAGES = "SELECT image_id FROM image_t WHERE run_id = ? ORDER BY hash(image_id), image_id LIMIT ?"

EMBEDDINGS_OF = """
SELECT image_id, ablation_id, embedding FROM embedding_t
WHERE run_id = ? AND list_contains(?, image_id) AND list_contains(?, ablation_id)
ORDER BY image_id, ablation_id
"""


def embeddings(con: Con, run: str, ablation_ids: list[int], limit: int) -> tuple[list[int], np.ndarray]:
    """The stored image embeddings of ``run`` under ``ablation_ids`` for a fixed sample of at most ``limit``
    of its images that have all of them. -> (image ids, (images, len(ablation_ids), E) float32), in the
    order asked; empty when the run kept none. A rescored run reads the embeddings of the run it came from."""
    row = store.find_run(con, run)
    if row is None or row.embedding_dtype == "none":
        return [], np.zeros((0, len(ablation_ids), 0), np.float32)
    sample = [int(r[0]) for r in con.execute(SAMPLE_IMAGES, [row.run_id, limit]).fetchall()]
    rows = con.execute(EMBEDDINGS_OF, [row.embedding_run_id, sample, list(ablation_ids)]).fetchall()
    if not rows:
        return [], np.zeros((0, len(ablation_ids), 0), np.float32)
    vectors = store.decode_embeddings([r[2] for r in rows], row.embedding_dtype)  # (rows, E)
    where = {(int(i), int(a)): k for k, (i, a, _) in enumerate(rows)}
    ids = sorted({int(i) for i, _, _ in rows if all((int(i), a) in where for a in ablation_ids)})
    out = np.stack([vectors[[where[(i, a)] for a in ablation_ids]] for i in ids]) if ids else \
        np.zeros((0, len(ablation_ids), vectors.shape[1]), np.float32)
    return ids, out


PICKS = """
SELECT s.image_id, s.ablation_id, p.label AS selected_label, s.correct
FROM selection_t s JOIN prompt_t p ON p.run_id = s.run_id AND p.prompt_id = s.prompt_id
WHERE s.run_id = ? AND list_contains(?, s.ablation_id)
"""


def picks(con: Con, run_id: int, ablation_ids: list[int]) -> pd.DataFrame:
    """The selected label and its correctness of every image under ``ablation_ids``."""
    return con.execute(PICKS, [run_id, list(ablation_ids)]).df()


# --------------------------------------------------------------------------------------------------
# The decomposition (compute.decomposition): its components, and the mean-ablation lab from stored shares.

COMPONENTS = "SELECT component_id, component, layer, head FROM component_t WHERE run_id = ? ORDER BY component_id"


def components(con: Con, run_id: int) -> pd.DataFrame:
    """The run's components in order (empty when it was not decomposed): component_id, component, layer, head."""
    return con.execute(COMPONENTS, [run_id]).df()


# Direct-effect mean ablation of the components in a set S (DESIGN.md): each image's embedding with T(c), c in
# S, replaced by its mean over the run's images, against every prompt; the argmax is the pick. In logit units
# times |e| / logit_scale (a share times the image's |e| is scale * <T(c), t_p>, and the argmax of
# <e', t_p> needs no normalisation; logit_scale and the logit bias are the same for every prompt).
MEAN_ABLATION = """
WITH u AS (
    SELECT c.image_id, c.component_id, c.prompt_id, c.logit::DOUBLE * d.norm::DOUBLE AS u
    FROM contribution_t c JOIN decomposed_t d ON d.run_id = c.run_id AND d.image_id = c.image_id
    WHERE c.run_id = ? AND c.ablation_id = 0
), means AS (
    SELECT component_id, prompt_id, AVG(u) AS mu FROM u WHERE list_contains(?, component_id) GROUP BY ALL
), scored AS (
    SELECT u.image_id, u.prompt_id, SUM(COALESCE(means.mu, u.u)) AS score
    FROM u LEFT JOIN means USING (component_id, prompt_id)
    GROUP BY ALL
), picked AS (
    SELECT image_id, arg_max(prompt_id, score) AS prompt_id FROM scored GROUP BY image_id
)
SELECT k.image_id, k.prompt_id, p.label, list_contains(i.labels, p.label) AS correct
FROM picked k
JOIN prompt_t p ON p.run_id = ? AND p.prompt_id = k.prompt_id
JOIN image_t i ON i.run_id = ? AND i.image_id = k.image_id
ORDER BY k.image_id
"""


def mean_ablation(con: Con, run_id: int, component_ids: list[int]) -> pd.DataFrame:
    """Every decomposed image's pick when the direct contributions of ``component_ids`` are replaced by their
    means over the run's images, from the stored shares alone (no model): image_id, prompt_id, label, correct.
    Its ``correct.mean()`` is the lab's accuracy; with no component, the baseline's picks."""
    return con.execute(MEAN_ABLATION, [run_id, [int(c) for c in component_ids], run_id, run_id]).df()


HEAD_DESCRIPTIONS = """
SELECT layer, head, rank, text, variance FROM head_description_t WHERE run_id = ? ORDER BY layer, head, rank
"""


def head_descriptions(con: Con, run_id: int) -> pd.DataFrame:
    """The run's TextSpan descriptions: layer, head, rank, text, variance (empty without)."""
    return con.execute(HEAD_DESCRIPTIONS, [run_id]).df()


# --------------------------------------------------------------------------------------------------
# Attribution (compute.attribution): the kinds a run estimated, each head's mean estimate, and every estimate
# beside its exact effect (the SQL the run's summary reads too: compute.store_heads.ESTIMATED_AND_EXACT).

ATTRIBUTION_SPECS = "SELECT spec FROM estimate_t WHERE run_id = ? GROUP BY spec ORDER BY MIN(estimate_id)"


def attribution_specs(con: Con, run_id: int) -> list[str]:
    """The specs (identity, knockout:patches>cls, ...) the run estimated, in the order first asked for; [] when
    none (or the store predates attribution's tables)."""
    try:
        return [r[0] for r in con.execute(ATTRIBUTION_SPECS, [run_id]).fetchall()]
    except duckdb.CatalogException:  # a version-3 store written before attribution (read-only: not added)
        return []


MEAN_ESTIMATES = """
SELECT e.ablation, e.layer, e.head, AVG(t.estimate::DOUBLE) AS estimate, COUNT(*) AS images
FROM attribution_t t JOIN estimate_t e ON e.run_id = t.run_id AND e.estimate_id = t.estimate_id
WHERE t.run_id = ? AND e.spec = ?
GROUP BY ALL
ORDER BY e.layer, e.head
"""


def mean_estimates(con: Con, run_id: int, spec: str) -> pd.DataFrame:
    """Per head of ``spec``: ablation, layer, head, its mean estimate over the images attributed, images."""
    return con.execute(MEAN_ESTIMATES, [run_id, spec]).df()


def estimated_and_exact(con: Con, run_id: int) -> dict[str, np.ndarray]:
    """Every (image, head-level ablation) with an estimate and an exact effect (compute.store.estimated_and_exact:
    spec, ablation, layer, head, image_id, estimate, exact)."""
    return store.estimated_and_exact(con, run_id)


# --------------------------------------------------------------------------------------------------
# The decomposition page and the export (analysis.decomposition): which prompt an image is judged on, each
# component's share of it, every ablation's effects on it, and the mean-ablation lab's curve.

DECOMPOSITION_TABLES = """
SELECT COUNT(*) FROM information_schema.tables
WHERE table_catalog = current_database() AND table_name IN ('component_t', 'decomposed_t', 'contribution_t',
                                                           'direct_t', 'head_description_t')
"""

DECOMPOSITION_STATE = """
SELECT (SELECT COUNT(*) FROM component_t WHERE run_id = ?) AS components,
       (SELECT COUNT(*) FROM decomposed_t WHERE run_id = ?) AS images,
       (SELECT COUNT(*) FROM head_description_t WHERE run_id = ?) AS descriptions
"""


def decomposition_state(con: Con, run_id: int) -> dict[str, int | bool]:
    """What the store holds of ``run_id``'s decomposition: ``tables`` (False for a store from before
    decomposition, version 2, opened read-only: it lacks the tables and views), ``components``, ``images``
    decomposed and TextSpan ``descriptions`` (rows)."""
    if con.execute(DECOMPOSITION_TABLES).fetchone()[0] < 5:
        return {"tables": False, "components": 0, "images": 0, "descriptions": 0}
    components, n_images, descriptions = con.execute(DECOMPOSITION_STATE, [run_id] * 3).fetchone()
    return {"tables": True, "components": int(components), "images": int(n_images),
            "descriptions": int(descriptions)}


# The prompt a decomposed image is judged on: of the prompts whose label is one of the image's labels, the one
# with the highest baseline logit (the right answer the model rates best; an image with one right prompt,
# as in the demo, is judged on that one). Images without a right prompt are left out.
CORRECT_PROMPT = """
correct AS (
    SELECT s.image_id, arg_max(s.prompt_id, s.logit) AS prompt_id
    FROM score_t s
    JOIN image_t i ON i.run_id = s.run_id AND i.image_id = s.image_id
    JOIN prompt_t p ON p.run_id = s.run_id AND p.prompt_id = s.prompt_id
    JOIN decomposed_t d ON d.run_id = s.run_id AND d.image_id = s.image_id
    WHERE s.run_id = ? AND s.ablation_id = 0 AND list_contains(i.labels, p.label)
    GROUP BY s.image_id
)"""

# share: the component's share of the correct prompt's logit; relative: the same minus its mean share over
# the run's prompts (what moves the pick: a term every prompt gets alike changes no argmax).
COMPONENT_SHARES = "WITH " + CORRECT_PROMPT + """
SELECT c.image_id, c.component_id,
       MAX(c.logit) FILTER (WHERE c.prompt_id = k.prompt_id) AS share,
       MAX(c.logit) FILTER (WHERE c.prompt_id = k.prompt_id) - AVG(c.logit) AS relative
FROM contribution_t c JOIN correct k ON k.image_id = c.image_id
WHERE c.run_id = ? AND c.ablation_id = 0
GROUP BY c.image_id, c.component_id
ORDER BY c.image_id, c.component_id
"""


def component_shares(con: Con, run_id: int) -> pd.DataFrame:
    """Per decomposed image with a right prompt and per component: image_id, component_id, share (of the
    correct prompt's baseline logit, CORRECT_PROMPT) and relative (share minus its mean over the prompts)."""
    return con.execute(COMPONENT_SHARES, [run_id, run_id]).df()


# Per image and non-baseline ablation, on the correct prompt: total (the ablated logit minus the baseline's),
# direct (direct_t), and both minus their mean over the prompts; indirect = total - direct.
EFFECT_VALUES = "WITH " + CORRECT_PROMPT + """
, e AS (
    SELECT d.image_id, d.ablation_id, d.prompt_id, s.logit - b.logit AS total, d.direct
    FROM direct_t d
    JOIN score_t s ON s.run_id = d.run_id AND s.image_id = d.image_id AND s.ablation_id = d.ablation_id
                  AND s.prompt_id = d.prompt_id
    JOIN score_t b ON b.run_id = d.run_id AND b.image_id = d.image_id AND b.ablation_id = 0
                  AND b.prompt_id = d.prompt_id
    WHERE d.run_id = ?
)
SELECT e.image_id, e.ablation_id,
       MAX(e.total) FILTER (WHERE e.prompt_id = k.prompt_id) AS total,
       MAX(e.direct) FILTER (WHERE e.prompt_id = k.prompt_id) AS direct,
       MAX(e.total) FILTER (WHERE e.prompt_id = k.prompt_id) - AVG(e.total) AS total_relative,
       MAX(e.direct) FILTER (WHERE e.prompt_id = k.prompt_id) - AVG(e.direct) AS direct_relative
FROM e JOIN correct k ON k.image_id = e.image_id
GROUP BY e.image_id, e.ablation_id
ORDER BY e.image_id, e.ablation_id
"""


def effect_values(con: Con, run_id: int) -> pd.DataFrame:
    """Per decomposed image with a right prompt and per non-baseline ablation computed for it: image_id,
    ablation_id, total, direct (effects on the correct prompt's logit, CORRECT_PROMPT), total_relative and
    direct_relative (each minus its mean over the prompts)."""
    return con.execute(EFFECT_VALUES, [run_id, run_id]).df()


# The lab's "all but the last N layers" for every N at once: mean-ablating the components of layers 0 to L - N
# changes image i's score of prompt p by the sum, over those layers, of (mean - own) of their components, so a
# running sum over the layers gives every N in one pass (MEAN_ABLATION is the plain method, per N; a test holds
# the two equal). n_kept = N; the components without a layer (final_ln_bias, pooling_mlp) are never ablated.
LAYER_MEAN_ABLATION = """
WITH u AS (
    SELECT c.image_id, c.component_id, c.prompt_id, k.layer, c.logit::DOUBLE * d.norm::DOUBLE AS u
    FROM contribution_t c
    JOIN decomposed_t d ON d.run_id = c.run_id AND d.image_id = c.image_id
    JOIN component_t k ON k.run_id = c.run_id AND k.component_id = c.component_id
    WHERE c.run_id = ? AND c.ablation_id = 0
), means AS (
    SELECT component_id, prompt_id, AVG(u) AS mu FROM u GROUP BY ALL
), totals AS (
    SELECT image_id, prompt_id, SUM(u) AS total FROM u GROUP BY ALL
), per_layer AS (
    SELECT u.image_id, u.prompt_id, u.layer, SUM(m.mu - u.u) AS shift
    FROM u JOIN means m USING (component_id, prompt_id)
    WHERE u.layer IS NOT NULL
    GROUP BY ALL
), top AS (
    SELECT MAX(layer) AS last FROM component_t WHERE run_id = ?
), running AS (
    SELECT image_id, prompt_id, layer,
           SUM(shift) OVER (PARTITION BY image_id, prompt_id ORDER BY layer) AS shift
    FROM per_layer
), scored AS (
    SELECT t.last - r.layer AS n_kept, r.image_id, r.prompt_id, o.total + r.shift AS score
    FROM running r JOIN totals o USING (image_id, prompt_id), top t
    UNION ALL  -- N = L + 1 and beyond: nothing ablated, the baseline's own scores
    SELECT t.last + 1 AS n_kept, o.image_id, o.prompt_id, o.total AS score FROM totals o, top t
), picked AS (
    SELECT n_kept, image_id, arg_max(prompt_id, score) AS prompt_id FROM scored GROUP BY n_kept, image_id
)
SELECT k.n_kept, k.image_id, k.prompt_id, list_contains(i.labels, p.label) AS correct
FROM picked k
JOIN prompt_t p ON p.run_id = ? AND p.prompt_id = k.prompt_id
JOIN image_t i ON i.run_id = ? AND i.image_id = k.image_id
ORDER BY k.n_kept, k.image_id
"""


def layer_mean_ablation(con: Con, run_id: int) -> pd.DataFrame:
    """``mean_ablation`` of "all but the last N layers" (analysis.decomposition.preset) for every N from 0 to
    L + 1 in one query: n_kept (N), image_id, prompt_id, correct. N = 0 ablates every layer (0, the
    embeddings, to L); N = L + 1 none."""
    return con.execute(LAYER_MEAN_ABLATION, [run_id, run_id, run_id, run_id]).df()


def prompt_texts(con: Con, run_id: int) -> list[list[str]]:
    """The texts the text tower embeds for each of the run's prompts, in prompt_id order (an ensemble's
    several; compute.prompts.Prompt.texts), from its stored config."""
    config = json.loads(con.execute(RUN_CONFIG, [run_id]).fetchone()[0])
    return [list(p.get("ensemble") or [p["text"]]) for p in config["prompts"]]
