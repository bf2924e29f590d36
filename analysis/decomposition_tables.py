"""The decomposition's tables as text cells and files, Streamlit-free (the Decomposition page shows the cells,
the figure pack writes the files: Markdown, booktabs LaTeX through analysis.latex, CSV):

- ``decomposition_layers``: per layer the direct shares of attention and MLP (mean, 95% interval);
- ``decomposition_effects``: total, direct and indirect effect of every single-layer and single-head
  ablation, each with its interval and the rule's mark;
- ``decomposition_mean_ablation``: the lab's presets and accuracies;
- ``decomposition_texts``: each described head's TextSpan texts.
"""

from __future__ import annotations

import pandas as pd

from analysis import latex
from analysis.decomposition import (
    OTHER_NAMES,
    QUANTITIES,
    Decomposition,
    described_heads,
    head_cells,
    head_rows,
    head_texts,
    layer_parts,
    other_parts,
    single_layer_rows,
)
from analysis.tables import MARK, interval, number
from analysis.text import md_cell

DIGITS = 2
EFFECTS_NOTE = (f"Effects on the correct prompt's logit (logit units): total = the ablated logit minus the "
                f"baseline's; direct = through the readout alone; indirect = total minus direct. Mean over images "
                f"[95% bootstrap interval]; {MARK}: p (Holm) < 0.05, paired t-test of the per-image values "
                f"against 0, Holm over the run's ablations for each quantity.")
LAYERS_NOTE = ("Direct shares of the correct prompt's baseline logit (logit units): mean over images [95% "
               "bootstrap interval]; attention = the layer's heads and out_proj's bias.")
LAB_NOTE = ("Direct-effect mean ablation: each mean-ablated component's contribution replaced by its mean over "
            "the run's images, from the stored shares (no model run). Accuracy [95% bootstrap interval]; "
            "Δ against the unablated picks, paired.")
TEXTS_NOTE = "TextSpan: per head, the texts whose directions explain most of its direct contributions' variance."
# Rows per LaTeX file: a longer table is split into parts (_part<K>of<N>.tex), each within a page (a column of a
# two-column paper included); a described head's row wraps over several lines.
ROWS_PER_PART = {"decomposition_texts": 8}
MAX_ROWS = 40


def _value(mean: float, lo: float, hi: float, mark: bool = False) -> str:
    return f"{number(mean, DIGITS, sign=True)}{MARK if mark else ''} {interval(lo, hi, DIGITS)}".strip()


def layer_cells(d: Decomposition) -> tuple[list[str], list[list[str]]]:
    parts = layer_parts(d).set_index(["layer", "part"])
    rows = []
    for layer in range(d.n_layers + 1):
        cells = []
        for part in (("embeddings",) if layer == 0 else ("attention", "MLP")):
            r = parts.loc[(layer, part)]
            cells.append(_value(r["mean"], r["lo"], r["hi"]))
        rows.append(["0 (embeddings)", cells[0], "—"] if layer == 0 else [str(layer), *cells])
    for r in other_parts(d).itertuples():
        rows.append([OTHER_NAMES.get(r.component, r.component), _value(r.mean, r.lo, r.hi), "—"])
    return ["Layer", "Attention", "MLP"], rows


def effect_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The single-layer ablations, then the single-head ones, of an ``effect_table``."""
    return pd.concat([single_layer_rows(table), head_rows(table).drop(columns=["layer", "head", "group"])],
                     ignore_index=True)


def effect_cells(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    rows = [[str(r["ablation"]), f"{int(r['images']):,}",
             *(_value(r[q], r[q + "_lo"], r[q + "_hi"], r["sig_" + q] != 0) for q in QUANTITIES)]
            for _, r in effect_rows(table).iterrows()]
    return ["Ablation", "Images", "Total", "Direct", "Indirect"], rows


def lab_cells(presets: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    rows = [[str(r.preset), str(r.components), number(r.accuracy, 3), interval(r.lo, r.hi, 3),
             number(r.change, 3, sign=True)] for r in presets.itertuples()]
    return ["Mean-ablated", "Components", "Accuracy", "95% CI", "Δ"], rows


def text_cells(d: Decomposition) -> tuple[list[str], list[list[str]]]:
    shares = head_cells(d).set_index(["layer", "head"])
    rows = []
    for layer, head in described_heads(d):
        texts = head_texts(d, layer, head)
        r = shares.loc[(layer, head)]
        rows.append([f"L{layer}.h{head}", _value(r["mean"], r["lo"], r["hi"]),
                     "; ".join(f"{t.text} ({t.variance:.0%})" for t in texts.itertuples())])
    return ["Head", "Direct share", "TextSpan texts (share of the head's variance)"], rows


def markdown(header: list[str], rows: list[list[str]], note: str) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(md_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n\n" + note + "\n"


def files(d: Decomposition, table: pd.DataFrame, presets: pd.DataFrame | None,
          provenance: list[str] | None = None) -> dict[str, str]:
    """The decomposition's table files by name (Markdown, LaTeX, CSV each): layers, effects (when the run
    has single-layer or single-head ablations), the lab's presets (when given), TextSpan's texts (when any).
    A LaTeX table longer than a page is split into parts (ROWS_PER_PART, MAX_ROWS)."""
    out: dict[str, str] = {}

    def add(stem: str, cells: tuple[list[str], list[list[str]]], note: str, csv: pd.DataFrame,
            wide: tuple[str, ...] = ()) -> None:
        header, rows = cells
        out[f"{stem}.md"] = markdown(header, rows, note)
        size = ROWS_PER_PART.get(stem, MAX_ROWS)
        chunks = [rows[k:k + size] for k in range(0, len(rows), size)] or [rows]
        for k, chunk in enumerate(chunks, start=1):
            name = stem if len(chunks) == 1 else f"{stem}_part{k}of{len(chunks)}"
            part = "" if len(chunks) == 1 else f" (part {k} of {len(chunks)}: rows {(k - 1) * size + 1}-" \
                                                f"{(k - 1) * size + len(chunk)} of {len(rows)})"
            out[f"{name}.tex"] = latex.table(header, chunk, note + part, provenance, wide)
        out[f"{stem}.csv"] = csv.to_csv(index=False)

    add("decomposition_layers", layer_cells(d), LAYERS_NOTE, layer_parts(d))
    rows = effect_rows(table)
    if len(rows):
        add("decomposition_effects", effect_cells(table), EFFECTS_NOTE, rows)
    if presets is not None and len(presets):
        add("decomposition_mean_ablation", lab_cells(presets), LAB_NOTE, presets)
    if len(d.descriptions):
        add("decomposition_texts", text_cells(d), TEXTS_NOTE, d.descriptions,
            wide=("TextSpan texts (share of the head's variance)",))
    return out
