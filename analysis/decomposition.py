"""The decomposition's read side, Streamlit-free: what the Decomposition page draws and the figure pack writes,
from what the store holds (compute.decomposition; the views ``contributions``, ``effects``,
``head_descriptions``), with no model.

Every number is about one prompt per image, its **correct prompt** (analysis.queries.CORRECT_PROMPT: of the
prompts whose label is one of the image's, the one with the highest baseline logit; images without one are
left out), in one of two measures (``MEASURES``): the share of that prompt's logit, or that share minus its
mean over the run's prompts (what moves the pick: a term every prompt gets alike changes no argmax).

- ``read``: everything at once (``Decomposition``), None for a run without a decomposition;
- ``layer_parts``: per layer the direct shares of attention (its heads and out_proj's bias) and of the MLP,
  layer 0 the embeddings (mean over images, 95% bootstrap interval); ``head_cells``: per head;
- ``effect_table``: per non-baseline ablation its total, direct and indirect effect (total = the ablated
  logit minus the baseline's, indirect = total - direct), each with its interval and the one significance
  rule (analysis.stats: the paired t-test of the per-image values against zero, Holm over the run's
  ablations, one family per quantity, as for a score on every other page);
- the mean-ablation lab (DESIGN.md: each T(c), c in a set S, replaced by its mean over the run's images):
  ``preset`` names a set, ``analysis.queries.mean_ablation`` scores it, ``lab_result`` says how accuracy
  moves against the unablated picks; ``curve`` is "all but the last N layers" for every N;
- ``top_images``: the images a component contributes most to; ``described_heads``: TextSpan's texts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis import queries, stats

PRESETS = ("all but the last N layers", "all MLPs", "all attention", "all heads of the last N layers")
MEASURES = {"share": "share of the correct prompt's logit",
            "relative": "share of the correct prompt's logit minus its mean over the prompts"}
QUANTITIES = ("total", "direct", "indirect")
PARTS = ("embeddings", "attention", "MLP")  # per layer: layer 0 holds the embeddings, layers 1-L the other two
PART_OF = {"embeddings": "embeddings", "head": "attention", "attention_bias": "attention", "mlp": "MLP"}
OTHER_NAMES = {"final_ln_bias": "the final layer norm's bias", "pooling_mlp": "the pooling head's MLP"}
ENABLE = ("add `[decomposition] enabled = true` to its experiment file and run it again (a rerun decomposes "
          "the images already done)")


def preset(components: pd.DataFrame, name: str, n: int = 4) -> list[int]:
    """The component ids a preset names. components: analysis.queries.components's frame.

    "all but the last N layers": every component of layers 0 (embeddings) to L - N; "all MLPs"; "all attention"
    (every head and attention bias); "all heads of the last N layers"."""
    layer = components["layer"]
    last = int(layer.max()) if len(components) else 0
    kind = components["component"]
    if name == PRESETS[0]:
        chosen = layer.notna() & (layer <= last - n)
    elif name == PRESETS[1]:
        chosen = kind == "mlp"
    elif name == PRESETS[2]:
        chosen = kind.isin(["head", "attention_bias"])
    elif name == PRESETS[3]:
        chosen = (kind == "head") & (layer > last - n)
    else:
        raise ValueError(f"unknown preset {name!r}: one of {', '.join(PRESETS)}")
    return [int(c) for c in components.loc[chosen, "component_id"]]


def missing_text(run: str, state: dict | None) -> str:
    """The one line a run without a decomposition gets: why, and how to have one (Markdown: ``run`` comes
    escaped as the caller shows it; the experiment key in backticks)."""
    if state is not None and not state["tables"]:
        return (f"Run {run} has no decomposition: this store predates it (schema version 2). To decompose the "
                f"run, {ENABLE}; the run migrates the store.")
    return f"Run {run} has no decomposition: to decompose it, {ENABLE}."


@dataclass
class Decomposition:
    """What the page and the pack draw from, for one run (picklable frames: cached by the dashboard)."""

    state: dict  # queries.decomposition_state
    components: pd.DataFrame  # queries.components, with a ``label`` (L3.h1, L3.mlp, embeddings)
    shares: pd.DataFrame  # queries.component_shares
    effects: pd.DataFrame  # queries.effect_values
    descriptions: pd.DataFrame  # queries.head_descriptions
    curve_picks: pd.DataFrame  # queries.layer_mean_ablation

    @property
    def images(self) -> int:
        """Decomposed images with a right prompt: the images every number here is over."""
        return int(self.shares["image_id"].nunique())

    @property
    def n_layers(self) -> int:
        return int(self.components["layer"].max()) if len(self.components) else 0


def label(component: str, layer: object, head: object) -> str:
    """A component's short name (compute.decomposition.Component.label, without importing torch)."""
    if component == "head":
        return f"L{int(layer)}.h{int(head)}"
    if pd.isna(layer) or component == "embeddings":
        return component
    return f"L{int(layer)}.{component}"


def read(con: queries.Con, run_id: int) -> Decomposition | None:
    """Everything the decomposition's views draw, or None when the run has none (no tables in the store, no
    components or no decomposed image)."""
    state = queries.decomposition_state(con, run_id)
    if not state["tables"] or not state["components"] or not state["images"]:
        return None
    components = queries.components(con, run_id)
    components["label"] = [label(c, la, h) for c, la, h in
                           zip(components["component"], components["layer"], components["head"], strict=True)]
    return Decomposition(state, components, queries.component_shares(con, run_id), queries.effect_values(con, run_id),
                         queries.head_descriptions(con, run_id), queries.layer_mean_ablation(con, run_id))


def state_of(con: queries.Con, run_id: int) -> dict:
    """queries.decomposition_state (cheap: the page asks it before reading the rest)."""
    return queries.decomposition_state(con, run_id)


# --------------------------------------------------------------------------------------------------
# Direct shares.


def _matrix(frame: pd.DataFrame, key: str, value: str, columns: list) -> np.ndarray:
    """(images, columns): ``value`` per image (rows, in image order) and ``key`` (columns in ``columns``'
    order), NaN where an image has none."""
    wide = frame.pivot_table(index="image_id", columns=key, values=value, aggfunc="sum", dropna=False)
    return wide.reindex(columns=columns).to_numpy(dtype=np.float64)


def _intervals(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean, lo, hi = stats.bootstrap_means(values) if values.shape[0] else (np.full(values.shape[1], np.nan),) * 3
    return mean, lo, hi


def layer_parts(d: Decomposition, measure: str = "share") -> pd.DataFrame:
    """Per layer and part (PARTS: the embeddings at layer 0, then attention and MLP), the direct share in the
    correct prompt's logit (``measure``): layer, part, mean, lo, hi (95% bootstrap over images), images."""
    kinds = d.components.set_index("component_id")
    parts = d.shares.assign(part=d.shares["component_id"].map(kinds["component"]).map(PART_OF),
                            layer=d.shares["component_id"].map(kinds["layer"]))
    parts = parts.dropna(subset=["part"])
    parts = parts.assign(key=list(zip(parts["layer"].astype(int), parts["part"], strict=True)))
    keys = [(0, "embeddings")] + [(la, p) for la in range(1, d.n_layers + 1) for p in PARTS[1:]]
    values = _matrix(parts, "key", measure, keys)
    mean, lo, hi = _intervals(values)
    return pd.DataFrame({"layer": [k[0] for k in keys], "part": [k[1] for k in keys], "mean": mean, "lo": lo,
                         "hi": hi, "images": (~np.isnan(values)).sum(axis=0)})


def other_parts(d: Decomposition, measure: str = "share") -> pd.DataFrame:
    """The components without a layer (final_ln_bias, SigLIP's pooling_mlp): component, mean, lo, hi."""
    rest = d.components[d.components["layer"].isna()]
    values = _matrix(d.shares, "component_id", measure, list(rest["component_id"]))
    mean, lo, hi = _intervals(values)
    return pd.DataFrame({"component": list(rest["component"]), "mean": mean, "lo": lo, "hi": hi})


def head_cells(d: Decomposition, measure: str = "share") -> pd.DataFrame:
    """Per head: component_id, label, layer, head, mean, lo, hi of its direct share (``measure``), images."""
    heads = d.components[d.components["component"] == "head"].reset_index(drop=True)
    values = _matrix(d.shares, "component_id", measure, list(heads["component_id"]))
    mean, lo, hi = _intervals(values)
    return pd.DataFrame({"component_id": heads["component_id"], "label": heads["label"],
                         "layer": heads["layer"].astype(int), "head": heads["head"].astype(int), "mean": mean,
                         "lo": lo, "hi": hi, "images": (~np.isnan(values)).sum(axis=0)})


def top_images(d: Decomposition, component_id: int, k: int = 8, measure: str = "share") -> pd.DataFrame:
    """The ``k`` images whose ``measure`` from one component is largest: image_id, value (largest first,
    ties by image id)."""
    rows = d.shares[d.shares["component_id"] == component_id]
    rows = rows.assign(value=rows[measure]).sort_values(["value", "image_id"], ascending=[False, True])
    return rows[["image_id", "value"]].head(k).reset_index(drop=True)


def described_heads(d: Decomposition) -> list[tuple[int, int]]:
    """The heads TextSpan described, (layer, head) in order."""
    pairs = d.descriptions[["layer", "head"]].drop_duplicates().itertuples(index=False)
    return [(int(la), int(h)) for la, h in pairs]


def head_texts(d: Decomposition, layer: int, head: int) -> pd.DataFrame:
    """One head's TextSpan texts: rank, text, variance (its share of the head's variance), in rank order."""
    rows = d.descriptions[(d.descriptions["layer"] == layer) & (d.descriptions["head"] == head)]
    return rows[["rank", "text", "variance"]].reset_index(drop=True)


# --------------------------------------------------------------------------------------------------
# Total, direct and indirect effects of the run's ablations.


def effect_table(d: Decomposition, ablations: pd.DataFrame, measure: str = "share") -> pd.DataFrame:
    """One row per non-baseline ablation with effects (queries.ablations' columns, sweep order): images and,
    for each quantity q of QUANTITIES, ``q`` (mean over images of its effect on the correct prompt's logit,
    ``measure``), ``q_lo`` / ``q_hi`` (95% bootstrap interval), ``p_q`` (paired t-test of the per-image values
    against 0), ``p_holm_q`` (Holm over the run's ablations, per quantity) and ``sig_q`` (stats.verdict)."""
    suffix = "" if measure == "share" else "_relative"
    e = d.effects.assign(total=d.effects["total" + suffix], direct=d.effects["direct" + suffix])
    e = e.assign(indirect=e["total"] - e["direct"])
    out = ablations[ablations["ablation_id"].isin(set(e["ablation_id"]))].reset_index(drop=True)
    ids = list(out["ablation_id"])
    matrices = [_matrix(e, "ablation_id", q, ids) for q in QUANTITIES]  # each (images, ablations)
    n = len(ids)
    if n == 0:
        for q in QUANTITIES:
            for col in ("", "_lo", "_hi"):
                out[q + col] = np.nan
            out["p_" + q] = out["p_holm_" + q] = np.nan
            out["sig_" + q] = 0
        out["images"] = 0
        return out
    mean, lo, hi = _intervals(np.concatenate(matrices, axis=1))
    out["images"] = (~np.isnan(matrices[0])).sum(axis=0)
    for k, q in enumerate(QUANTITIES):
        out[q], out[q + "_lo"], out[q + "_hi"] = mean[k * n:(k + 1) * n], lo[k * n:(k + 1) * n], hi[k * n:(k + 1) * n]
        out["p_" + q] = stats.paired_t(matrices[k])
        out["p_holm_" + q] = stats.holm(out["p_" + q].to_numpy(dtype=np.float64))
        out["sig_" + q] = [stats.verdict(v, p) for v, p in zip(out[q], out["p_holm_" + q], strict=True)]
    return out


def single_layer_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``effect_table`` that ablate one whole layer (no head, no knockout target)."""
    return table[(table["n_layers"] == 1) & (table["n_heads"] == 0) & (table["target"] == "")].reset_index(drop=True)


def head_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``effect_table`` that ablate one head of one layer, with ``layer``, ``head`` and ``group``
    (analysis.heads.group_of: the kind, with its knockout target)."""
    rows = table[(table["n_layers"] == 1) & (table["n_heads"] == 1)].reset_index(drop=True)
    return rows.assign(layer=rows["first_layer"].astype(int), head=rows["first_head"].astype(int),
                       group=[f"{k}:{t}" if t else k for k, t in zip(rows["kind"], rows["target"], strict=True)])


# --------------------------------------------------------------------------------------------------
# The mean-ablation lab.


def lab_result(picks: pd.DataFrame, baseline: pd.DataFrame) -> dict:
    """Accuracy of the lab's picks (queries.mean_ablation) against the unablated picks of the same images
    (queries.mean_ablation with no component): images, accuracy, lo, hi, baseline, change, change_lo,
    change_hi (95% paired bootstrap), only_baseline, only_lab (images right under one of them only)."""
    both = baseline[["image_id", "correct"]].merge(picks[["image_id", "correct"]], on="image_id",
                                                   suffixes=("_base", "_lab"))
    base = both["correct_base"].to_numpy(dtype=np.float64)
    lab = both["correct_lab"].to_numpy(dtype=np.float64)
    mean, lo, hi = _intervals(np.stack([lab, lab - base, base], axis=1)) if len(both) else ([np.nan] * 3,) * 3
    return {"images": len(both), "accuracy": float(mean[0]), "lo": float(lo[0]), "hi": float(hi[0]),
            "baseline": float(mean[2]), "change": float(mean[1]), "change_lo": float(lo[1]),
            "change_hi": float(hi[1]), "only_baseline": int(((base > 0.5) & (lab < 0.5)).sum()),
            "only_lab": int(((lab > 0.5) & (base < 0.5)).sum())}


def curve(d: Decomposition) -> pd.DataFrame:
    """Accuracy when all but the last N layers' direct contributions are mean-ablated, for N = 0 to L + 1:
    n_kept (N), accuracy, lo, hi (95% bootstrap over images), images. N = L + 1 ablates nothing."""
    picks = d.curve_picks
    ns = sorted(int(n) for n in picks["n_kept"].unique())
    values = _matrix(picks.assign(correct=picks["correct"].astype(float)), "n_kept", "correct", ns)
    mean, lo, hi = _intervals(values)
    return pd.DataFrame({"n_kept": ns, "accuracy": mean, "lo": lo, "hi": hi,
                         "images": (~np.isnan(values)).sum(axis=0)})


def preset_name(name: str, n: int, n_layers: int | None = None) -> str:
    """A preset as a reader says it: "all but the last 4 layers" ("every layer" for N = 0, "none" past the
    last layer, given ``n_layers``)."""
    if name == PRESETS[0] and n_layers is not None and n > n_layers:
        return "none (the unablated picks)"
    if name == PRESETS[0] and n == 0:
        return "every layer (0, the embeddings, to the last)"
    return name.replace(" N ", f" {n} ").replace("last 1 layers", "last layer")


def lab_presets(con: queries.Con, run_id: int, d: Decomposition, n: int = 4) -> pd.DataFrame:
    """The lab's presets as a table (the figure pack's): "all but the last N layers" for every N (from the
    curve's one query), then "all MLPs", "all attention" and "all heads of the last ``n`` layers" (each
    queries.mean_ablation): preset, components (how many are mean-ablated), and ``lab_result``'s columns."""
    baseline = queries.mean_ablation(con, run_id, [])
    rows = []
    for k in sorted(int(x) for x in d.curve_picks["n_kept"].unique()):
        picks = d.curve_picks[d.curve_picks["n_kept"] == k]
        rows.append({"preset": preset_name(PRESETS[0], k, d.n_layers), "components": len(preset(d.components, PRESETS[0], k)),
                     **lab_result(picks, baseline)})
    for name in PRESETS[1:]:
        ids = preset(d.components, name, n)
        rows.append({"preset": preset_name(name, n), "components": len(ids),
                     **lab_result(queries.mean_ablation(con, run_id, ids), baseline)})
    return pd.DataFrame(rows)
