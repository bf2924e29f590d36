"""The figure pack's tables as files: Table 1 (Markdown, LaTeX whole and per metric, CSV), the McNemar tests,
one image's Figure 5 (the prompt each ablation selects and the caption that continues it) and the run's
selections (CSV, Parquet), each with its provenance where its format has room (analysis.provenance).
"""

from __future__ import annotations

import io

import pandas as pd

from analysis import attribution, decomposition_tables, latex, queries, tables
from analysis.pack_data import PackData
from analysis.pack_text import describe
from analysis.provenance import Provenance, stamp
from analysis.slices import EVERYTHING, Slice
from analysis.text import md_cell


def selections_frame(con: queries.Con, run_id: int, where: Slice = EVERYTHING) -> pd.DataFrame:
    """The slice's selections, one row per image x ablation, for CSV and Parquet (no local paths)."""
    ab = queries.ablations(con, run_id)
    rows = queries.slice_rows(con, run_id, tables.baseline_id(ab), where, sort="image")
    return rows.assign(labels=rows["labels"].map("|".join))


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


def figure5_cells(selections: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """The study's Figure 5 for one image, (header, rows): one row per ablation, in sweep order, never merged
    (a merged "9-12" would read as single layers in one row and a block in another)."""
    captions = selections["caption"].notna().any()
    header = ["Ablation", "Selected prompt", "Right"] + (["Generated caption"] if captions else [])
    rows = []
    for r in selections.itertuples():
        row = [str(r.ablation), str(r.selected_prompt), "✓" if r.correct else "✗"]
        if captions:
            row.append("" if pd.isna(r.caption) else str(r.caption))
        rows.append(row)
    return header, rows


def figure5_markdown(selections: pd.DataFrame) -> str:
    header, rows = figure5_cells(selections)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(md_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def figure5_latex(selections: pd.DataFrame, prov: Provenance | None = None) -> str:
    """Figure 5 as LaTeX (analysis.latex: booktabs, tabularx; no amssymb: right or wrong as yes / no)."""
    return latex.figure5(*figure5_cells(selections), prov.lines() if prov else None)


def attribution_markdown(quality: pd.DataFrame, digits: int = 3) -> str:
    """The attribution quality table (analysis.attribution.quality_table) as Markdown, with what it means."""
    head = list(quality.columns)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if c in ("kind", "level") else "---:" for c in head) + "|"]
    for row in quality.itertuples(index=False):
        cells = [md_cell(str(v)) if k < 2 else (str(v) if k < 4 else ("" if pd.isna(v) else f"{v:.{digits}f}"))
                 for k, v in enumerate(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + attribution.FOOTNOTE + "\n"


def table_files(data: PackData, prov: Provenance | None = None,
                selections: pd.DataFrame | None = None) -> dict[str, bytes]:
    """The pack's tables by file name: Table 1 (Markdown, LaTeX whole and per metric, CSV), the McNemar
    tests, the image's Figure 5, the decomposition's tables (analysis.decomposition_tables) when the run has
    one, and ``selections`` (CSV, Parquet) when given; provenance written in."""
    lines = prov.lines() if prov else None
    files: dict[str, str | bytes] = {
        "table1.md": tables.summary_markdown(data.summary),
        "table1.tex": latex.table1(data.summary, provenance=lines),
        "table1.csv": data.summary.to_csv(index=False),
    }
    for metric in tables.metrics_of(data.summary):
        files[f"table1_{metric}.tex"] = latex.table1(data.summary, [metric], provenance=lines)
    files["mcnemar.csv"] = tables.mcnemar_of(data.summary).to_csv(index=False)
    if data.image_selections is not None and len(data.image_selections):
        picks = tables.select_ablations(data.image_selections, data.chosen)
        stem = f"image{data.image_id}_figure5"
        files[f"{stem}.md"] = figure5_markdown(picks)
        files[f"{stem}.tex"] = figure5_latex(picks, prov)
        files[f"{stem}.csv"] = picks.to_csv(index=False)
    if data.attribution is not None and data.attribution.measured:
        quality = attribution.quality_table(data.attribution)
        files["attribution.csv"] = quality.to_csv(index=False)
        files["attribution.md"] = attribution_markdown(quality)
        files["attribution.tex"] = latex.attribution(quality, provenance=lines)
    if data.decomposition is not None and data.effects is not None:
        files.update(decomposition_tables.files(data.decomposition, data.effects, data.lab, lines))
    if selections is not None:
        files["selections.csv"] = selections.to_csv(index=False)
        files["selections.parquet"] = parquet_bytes(selections)
    out = {}
    for name, content in files.items():
        stem = name.rsplit(".", 1)[0]
        stamped = stamp(name, content, prov, describe(stem, data)) if prov is not None else content
        out[name] = stamped.encode() if isinstance(stamped, str) else stamped
    return out
