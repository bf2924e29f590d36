-- The store's schema: tables (free to change) and the public views (stable names and columns,
-- see DESIGN.md). Every statement is idempotent; compute.storefile runs this file when it creates a store
-- or migrates an older one (inside that transaction), then writes the marker table
-- clip_attention_lab_t (application, schema_version = compute.storefile.SCHEMA_VERSION). A change to a
-- table here needs a migration in compute.storefile.MIGRATIONS and a new SCHEMA_VERSION.
-- Rows are keyed by small integer ids; the views turn them back into names.

CREATE TABLE IF NOT EXISTS run_t (
    run_id      INTEGER PRIMARY KEY,
    run         VARCHAR NOT NULL UNIQUE,
    model       VARCHAR NOT NULL,            -- hub id or local folder of the CLIP model
    created_at  TIMESTAMP NOT NULL,
    updated_at  TIMESTAMP NOT NULL,
    status      VARCHAR NOT NULL,            -- running | complete
    config      JSON NOT NULL,               -- the resolved experiment, as run
    config_hash VARCHAR NOT NULL,            -- Experiment.identity_hash(): resume only on a match
    n_layers    INTEGER NOT NULL,
    n_images    INTEGER NOT NULL,
    embedding_dtype VARCHAR NOT NULL,        -- float32 | float16 | none
    parent_run  VARCHAR,                     -- set for runs made by `rescore`
    embedding_run_id INTEGER NOT NULL        -- the run whose embedding_t rows this run reads (itself,
                                             -- or for a rescore the run it was computed from)
);

CREATE TABLE IF NOT EXISTS image_t (
    run_id    INTEGER NOT NULL,
    image_id  BIGINT NOT NULL,
    file_name VARCHAR NOT NULL,
    path      VARCHAR NOT NULL,              -- absolute path, for the dashboard's thumbnails
    labels    VARCHAR[] NOT NULL,
    PRIMARY KEY (run_id, image_id)
);

CREATE TABLE IF NOT EXISTS prompt_t (
    run_id    INTEGER NOT NULL,
    prompt_id SMALLINT NOT NULL,             -- order of [[prompts]] in the experiment
    prompt    VARCHAR NOT NULL,
    label     VARCHAR NOT NULL,
    PRIMARY KEY (run_id, prompt_id)
);

CREATE TABLE IF NOT EXISTS ablation_t (
    run_id      INTEGER NOT NULL,
    ablation_id SMALLINT NOT NULL,           -- order of the sweep; 0 is baseline
    ablation    VARCHAR NOT NULL,            -- canonical label: baseline, identity:3, zero:5-8/h2-4, ...
    kind        VARCHAR NOT NULL,            -- baseline or a key of compute.ablations.KINDS
    layers      INTEGER[] NOT NULL,          -- 1-based
    heads       INTEGER[] NOT NULL DEFAULT [],  -- 0-based; empty: whole layers
    target      VARCHAR,                     -- knockout's blocked flow (patches>cls, ...); NULL otherwise
    PRIMARY KEY (run_id, ablation_id)
);

-- One row per run x image x ablation x prompt. No index: rows are only ever written in the same
-- transaction as their selection_t row, whose primary key forbids a second copy.
CREATE TABLE IF NOT EXISTS score_t (
    run_id      INTEGER NOT NULL,
    image_id    BIGINT NOT NULL,
    ablation_id SMALLINT NOT NULL,
    prompt_id   SMALLINT NOT NULL,
    logit       REAL NOT NULL,
    prob        REAL NOT NULL
);

-- One row per run x image x ablation: the (image, ablation) pair is done when its row exists.
CREATE TABLE IF NOT EXISTS selection_t (
    run_id         INTEGER NOT NULL,
    image_id       BIGINT NOT NULL,
    ablation_id    SMALLINT NOT NULL,
    prompt_id      SMALLINT NOT NULL,        -- the argmax prompt
    correct        BOOLEAN NOT NULL,
    prob           REAL NOT NULL,            -- softmax probability of the selected prompt (confidence)
    margin         REAL,                     -- top logit minus the second (NULL with one prompt)
    score_baseline REAL NOT NULL,            -- cos(unablated image embedding, selected prompt embedding)
    caption        VARCHAR,                  -- NULL until the caption stage ran (or no captioner)
    caption_score  REAL,                     -- cos(unablated image embedding, caption embedding)
    -- NULL: computed in the run's dtype (every pair of a float32 run); in a low-precision run, why the pair
    -- was computed again in float32 and holds those values: baseline | sample | margin (compute.store.VERIFIED)
    verified       VARCHAR,
    PRIMARY KEY (run_id, image_id, ablation_id)
);

-- The projected image embedding (before normalisation) per run x image x ablation, for rescore.
CREATE TABLE IF NOT EXISTS embedding_t (
    run_id      INTEGER NOT NULL,
    image_id    BIGINT NOT NULL,
    ablation_id SMALLINT NOT NULL,
    -- raw little-endian floats of run_t.embedding_dtype. Uncompressed: floats do not compress, and trying
    -- at every checkpoint cost the store writer half its time (README, Performance).
    embedding   BLOB USING COMPRESSION uncompressed NOT NULL
);

CREATE TABLE IF NOT EXISTS error_t (
    run_id   INTEGER NOT NULL,
    image_id BIGINT NOT NULL,
    stage    VARCHAR NOT NULL,               -- load | caption
    message  VARCHAR NOT NULL,
    PRIMARY KEY (run_id, image_id, stage)
);

-- Dataset statistics a run depends on, per layer (for mean ablations: attention_mean, the attention
-- block's output per position; attention_head_mean, the heads' outputs before out_proj per position).
CREATE TABLE IF NOT EXISTS stat_t (
    run_id INTEGER NOT NULL,
    name   VARCHAR NOT NULL,
    layer  INTEGER NOT NULL,
    shape  INTEGER[] NOT NULL,
    data   BLOB NOT NULL,                    -- float32
    PRIMARY KEY (run_id, name, layer)
);

-- Generated captions, shared across ablations and runs: the captioner is never ablated, so a caption
-- depends only on (captioner, settings, image file, prefix).
CREATE TABLE IF NOT EXISTS caption_cache_t (
    captioner VARCHAR NOT NULL,              -- model reference + generation settings
    image     VARCHAR NOT NULL,              -- absolute image path
    prefix    VARCHAR NOT NULL,
    caption   VARCHAR NOT NULL,
    PRIMARY KEY (captioner, image, prefix)
);

-- The decomposition (compute.decomposition; DESIGN.md "Decomposition"), for runs with [decomposition]
-- enabled. An image is decomposed when its decomposed_t row exists; all its rows below are written in one
-- transaction (with its batch's selections during the sweep).

-- The components of a run's image embeddings, in compute.decomposition.components_of's order.
CREATE TABLE IF NOT EXISTS component_t (
    run_id       INTEGER NOT NULL,
    component_id SMALLINT NOT NULL,
    component    VARCHAR NOT NULL,           -- embeddings | head | attention_bias | mlp | final_ln_bias | pooling_mlp
    layer        INTEGER,                    -- 0 for embeddings, 1-based; NULL for final_ln_bias, pooling_mlp
    head         INTEGER,                    -- 0-based, head only
    PRIMARY KEY (run_id, component_id)
);

-- One row per run x decomposed image.
CREATE TABLE IF NOT EXISTS decomposed_t (
    run_id       INTEGER NOT NULL,
    image_id     BIGINT NOT NULL,
    norm         REAL NOT NULL,              -- |e|, the unablated embedding's norm the shares are divided by
    vector_dtype VARCHAR NOT NULL,           -- float32 | float16 | none: the dtype of its vector rows
    PRIMARY KEY (run_id, image_id)
);

-- Each component's share of each prompt's logit (shares + the logit bias = the logit). Baseline only for
-- now (ablation_id 0).
CREATE TABLE IF NOT EXISTS contribution_t (
    run_id       INTEGER NOT NULL,
    image_id     BIGINT NOT NULL,
    ablation_id  SMALLINT NOT NULL,
    component_id SMALLINT NOT NULL,
    prompt_id    SMALLINT NOT NULL,
    logit        REAL NOT NULL
);

-- The direct effect of every non-baseline ablation on each prompt's logit (total and indirect: the view).
CREATE TABLE IF NOT EXISTS direct_t (
    run_id      INTEGER NOT NULL,
    image_id    BIGINT NOT NULL,
    ablation_id SMALLINT NOT NULL,
    prompt_id   SMALLINT NOT NULL,
    direct      REAL NOT NULL
);

-- In the joint space, divided by |e| (so a prompt's share is logit_scale * <vector, prompt embedding>):
-- T(c) per component and the direct change of the embedding per ablation, for rescore (new prompts),
-- TextSpan and the dashboard. Raw little-endian floats of decomposed_t.vector_dtype. A rescored run reads
-- those of the run it was computed from (run_t.embedding_run_id).
CREATE TABLE IF NOT EXISTS component_vector_t (
    run_id       INTEGER NOT NULL,
    image_id     BIGINT NOT NULL,
    component_id SMALLINT NOT NULL,
    vector       BLOB USING COMPRESSION uncompressed NOT NULL
);

CREATE TABLE IF NOT EXISTS direct_vector_t (
    run_id      INTEGER NOT NULL,
    image_id    BIGINT NOT NULL,
    ablation_id SMALLINT NOT NULL,
    vector      BLOB USING COMPRESSION uncompressed NOT NULL
);

-- TextSpan (compute.textspan): per head, the texts chosen in order (rank 1 first) and the share of the
-- head's variance across the run's images each one's direction explains.
CREATE TABLE IF NOT EXISTS head_description_t (
    run_id   INTEGER NOT NULL,
    layer    INTEGER NOT NULL,
    head     INTEGER NOT NULL,
    rank     INTEGER NOT NULL,               -- 1-based
    text     VARCHAR NOT NULL,
    variance REAL NOT NULL,
    PRIMARY KEY (run_id, layer, head, rank)
);

-- Attribution patching (compute.attribution; docs/attribution.md), for runs with [attribution] kinds: per image
-- and head-level ablation, the estimate of its effect on the margin M from one forward and one backward pass.

-- The head-level ablations a run's estimates stand for, in the order estimates were first asked for: per
-- spec (a kind, or kind:target) every layer and head. Labels as ablation_t's (identity:5/h3), so an estimate
-- meets the exact effect of the same ablation by name when the run also sweeps it.
CREATE TABLE IF NOT EXISTS estimate_t (
    run_id      INTEGER NOT NULL,
    estimate_id SMALLINT NOT NULL,
    spec        VARCHAR NOT NULL,            -- what [attribution] kinds named: identity, knockout:patches>cls
    ablation    VARCHAR NOT NULL,            -- canonical head-level label: identity:5/h3, knockout:9/patches>cls/h2
    kind        VARCHAR NOT NULL,
    layer       INTEGER NOT NULL,            -- 1-based
    head        INTEGER NOT NULL,            -- 0-based
    target      VARCHAR,                     -- knockout's blocked flow; NULL otherwise
    PRIMARY KEY (run_id, estimate_id)
);

-- One row per run x image x spec: the image's estimates of that spec are stored (written in one transaction
-- with them), with the two prompts its margin M compares and M itself on the unablated pass.
CREATE TABLE IF NOT EXISTS attributed_t (
    run_id          INTEGER NOT NULL,
    image_id        BIGINT NOT NULL,
    spec            VARCHAR NOT NULL,
    prompt_id       SMALLINT NOT NULL,       -- the baseline's selected prompt
    other_prompt_id SMALLINT NOT NULL,       -- the baseline's second prompt
    metric          REAL NOT NULL,           -- M = logit(prompt_id) - logit(other_prompt_id), unablated
    PRIMARY KEY (run_id, image_id, spec)
);

-- The estimates: est(A) = <dM/dz, z_A - z>, in logit units, per image and head-level ablation. No index: rows
-- are written only with their attributed_t row, whose primary key forbids a second copy.
CREATE TABLE IF NOT EXISTS attribution_t (
    run_id      INTEGER NOT NULL,
    image_id    BIGINT NOT NULL,
    estimate_id SMALLINT NOT NULL,
    estimate    REAL NOT NULL
);

CREATE OR REPLACE VIEW runs AS
SELECT run, model, created_at, status, config FROM run_t;

CREATE OR REPLACE VIEW images AS
SELECT r.run, i.image_id, i.file_name, i.labels
FROM image_t i JOIN run_t r USING (run_id);

CREATE OR REPLACE VIEW scores AS
SELECT r.run, s.image_id, a.ablation, p.prompt, p.label, s.logit, s.prob
FROM score_t s
JOIN run_t r USING (run_id)
JOIN ablation_t a ON a.run_id = s.run_id AND a.ablation_id = s.ablation_id
JOIN prompt_t p ON p.run_id = s.run_id AND p.prompt_id = s.prompt_id;

CREATE OR REPLACE VIEW selections AS
SELECT r.run, s.image_id, a.ablation, p.prompt, p.label, s.correct, s.score_baseline, s.caption, s.caption_score
FROM selection_t s
JOIN run_t r USING (run_id)
JOIN ablation_t a ON a.run_id = s.run_id AND a.ablation_id = s.ablation_id
JOIN prompt_t p ON p.run_id = s.run_id AND p.prompt_id = s.prompt_id;

CREATE OR REPLACE VIEW errors AS
SELECT r.run, e.image_id, e.stage, e.message
FROM error_t e JOIN run_t r USING (run_id);

CREATE OR REPLACE VIEW contributions AS
SELECT r.run, c.image_id, a.ablation, k.component, k.layer, k.head, p.prompt, p.label, c.logit
FROM contribution_t c
JOIN run_t r USING (run_id)
JOIN ablation_t a ON a.run_id = c.run_id AND a.ablation_id = c.ablation_id
JOIN component_t k ON k.run_id = c.run_id AND k.component_id = c.component_id
JOIN prompt_t p ON p.run_id = c.run_id AND p.prompt_id = c.prompt_id;

-- total = the ablation's logit minus the baseline's (score_t); indirect = total - direct.
CREATE OR REPLACE VIEW effects AS
SELECT r.run, d.image_id, a.ablation, p.prompt, p.label,
       s.logit - b.logit AS total, d.direct, (s.logit - b.logit) - d.direct AS indirect
FROM direct_t d
JOIN run_t r USING (run_id)
JOIN ablation_t a ON a.run_id = d.run_id AND a.ablation_id = d.ablation_id
JOIN prompt_t p ON p.run_id = d.run_id AND p.prompt_id = d.prompt_id
JOIN score_t s ON s.run_id = d.run_id AND s.image_id = d.image_id AND s.ablation_id = d.ablation_id
              AND s.prompt_id = d.prompt_id
JOIN score_t b ON b.run_id = d.run_id AND b.image_id = d.image_id AND b.ablation_id = 0 AND b.prompt_id = d.prompt_id;

CREATE OR REPLACE VIEW head_descriptions AS
SELECT r.run, h.layer, h.head, h.rank, h.text, h.variance
FROM head_description_t h JOIN run_t r USING (run_id);

CREATE OR REPLACE VIEW attributions AS
SELECT r.run, a.image_id, e.ablation, a.estimate
FROM attribution_t a
JOIN run_t r USING (run_id)
JOIN estimate_t e ON e.run_id = a.run_id AND e.estimate_id = a.estimate_id;
