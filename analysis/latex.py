"""The pack's tables as LaTeX that compiles as written: a header comment names the packages a document needs
(``PACKAGES``: booktabs, graphicx, tabularx; no amssymb), and every table fits the width it is put in.

Each file is a table body to ``\\input`` inside a ``table`` (a column) or ``table*`` (the page's width):
set in ``\\footnotesize`` with narrow column gaps, and shrunk to ``\\linewidth`` only when its natural width
is wider (``\\resizebox``, graphicx), so it never runs into the margin. Table 1 comes whole (every metric:
for the page's width) and one metric at a time (``metrics=[...]``: for a column of a two-column paper);
Figure 5 wraps its prompts and captions in ``tabularx`` columns as wide as the line.

CI compiles every exported .tex in a minimal one- and two-column article (tests/integration/test_latex.py).
"""

from __future__ import annotations

import pandas as pd

from analysis import tables

PACKAGES = ("booktabs", "graphicx", "tabularx")
SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$",
           "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
           ">": r"\textgreater{}", "|": r"\textbar{}"}
TEXT = {"Δ": r"$\Delta$", "−": "$-$", "—": "---", "–": "--", "×": r"$\times$", "…": r"\dots{}", "≤": r"$\leq$",
        "≥": r"$\geq$", "±": r"$\pm$", "✓": "yes", "✗": "no"}


def escape(text: str) -> str:
    """``text`` as LaTeX text: special characters escaped, the typography of the pages as plain LaTeX."""
    return "".join(SPECIAL.get(ch, TEXT.get(ch, ch)) for ch in str(text))


def cell(text: str) -> str:
    """A cell: escaped, the significance mark (tables.MARK) as a superscript."""
    out = escape(text)
    if text.endswith(tables.MARK):
        out = out[: -len(escape(tables.MARK))] + r"\textsuperscript{" + escape(tables.MARK) + "}"
    return out


def header(what: str, provenance: list[str] | None = None) -> list[str]:
    """The comment lines that open every file: what it is, the packages it needs, where it came from."""
    lines = [f"% {what}",
             "% Needs: " + " ".join(rf"\usepackage{{{p}}}" for p in PACKAGES),
             r"% Put it in a table (a column) or table* (the page's width) with \input; it fits \linewidth."]
    return lines + [f"% {line}" for line in provenance or []]


def fitted(tabular: list[str]) -> list[str]:
    """A tabular in print size, shrunk to the line's width only when it is wider (never overfull)."""
    return [r"\begingroup\footnotesize\setlength{\tabcolsep}{4pt}%", r"\sbox0{%", *tabular, "}%",
            r"\ifdim\wd0>\linewidth\resizebox{\linewidth}{!}{\usebox0}\else\usebox0\fi",
            r"\endgroup"]


def table1(summary: pd.DataFrame, metrics: list[str] | None = None, digits: int = tables.DIGITS,
           provenance: list[str] | None = None) -> str:
    """The study's Table 1 (tables.table1_cells): per metric a group of mean, 95% interval and change
    against baseline with its mark; ``metrics``: those metrics only (default: every one the run has). The
    image count is a column only where ablations differ in it (a run in progress)."""
    header_cells, rows = tables.table1_cells(summary, digits)
    every = tables.metrics_of(summary)
    metrics = [m for m in (metrics or every) if m in every]
    # One image count for every row (a complete run): said once above the labels instead of in a column.
    counts = {row[1] for row in rows}
    same = len(counts) == 1
    keep = [0] + ([] if same else [1]) + [2 + 3 * every.index(m) + k for m in metrics for k in range(3)]
    rows = [[row[k] for k in keep] for row in rows]
    lead = ["Ablation"] + ([] if same else ["Images"])
    spec = "l" + ("" if same else "r") + " rcr" * len(metrics)
    first = escape(f"{counts.pop()} images") if same else "&"
    groups = " & ".join(r"\multicolumn{3}{c}{" + escape(tables.title(m)) + "}" for m in metrics)
    rules = " ".join(rf"\cmidrule(lr){{{len(lead) + 1 + 3 * k}-{len(lead) + 3 + 3 * k}}}" for k in range(len(metrics)))
    sub = " & ".join(lead + ["Mean", r"95\% CI", r"$\Delta$"] * len(metrics))
    body = [r"\begin{tabular}{" + spec + "}", r"\toprule", first + " & " + groups + r" \\", rules, sub + r" \\",
            r"\midrule"]
    body += [" & ".join(cell(v) for v in row) + r" \\" for row in rows]
    body += [r"\bottomrule", r"\end{tabular}"]
    what = "Table 1" + (f" ({', '.join(tables.METRIC_TITLES[m] for m in metrics)})" if metrics != every else "")
    lines = header(f"{what}. {tables.FOOTNOTE}".replace("Δ", "Delta"), provenance) + fitted(body)
    return "\n".join(lines) + "\n"


def figure5(header_cells: list[str], rows: list[list[str]], provenance: list[str] | None = None) -> str:
    """The study's Figure 5 for one image (analysis.pack_tables.figure5_cells): the prompt and the caption
    columns wrap, the table is exactly as wide as the line."""
    wide = {"Selected prompt", "Generated caption"}
    spec = "".join(r">{\raggedright\arraybackslash}X" if h in wide else "l" for h in header_cells)
    body = [r"\begin{tabularx}{\linewidth}{@{}" + spec + "@{}}", r"\toprule",
            " & ".join(escape(h) for h in header_cells) + r" \\", r"\midrule"]
    body += [" & ".join(escape(v) for v in row) + r" \\" for row in rows]
    body += [r"\bottomrule", r"\end{tabularx}"]
    lines = header("Figure 5: the prompt each ablation selects for one image, and the caption that continues it",
                   provenance)
    lines += [r"\begingroup\footnotesize\setlength{\tabcolsep}{4pt}%", *body, r"\endgroup"]
    return "\n".join(lines) + "\n"


def attribution(quality: pd.DataFrame, digits: int = 3, provenance: list[str] | None = None) -> str:
    """Attribution's quality (analysis.attribution.quality_table): per kind and level, rho, the top-k recalls,
    sign agreement and the pooled rho."""
    heads = ["Kind", "Level", "Heads", "Images", r"$\rho$"]
    recalls = [c for c in quality.columns if c.endswith("recall")]
    heads += [f"Top-{c.split('-')[1].split()[0]} recall" for c in recalls] + ["Sign", r"Pooled $\rho$"]
    body = [r"\begin{tabular}{llrr" + "r" * (len(heads) - 4) + "}", r"\toprule",
            " & ".join(h if "$" in h else escape(h) for h in heads) + r" \\", r"\midrule"]
    for row in quality.itertuples(index=False):
        values = list(row)
        cells = [escape(str(values[0])), escape(str(values[1])), str(values[2]), str(values[3])]
        cells += ["" if pd.isna(v) else f"{v:.{digits}f}" for v in values[4:]]
        body.append(" & ".join(cells) + r" \\")
    body += [r"\bottomrule", r"\end{tabular}"]
    lines = header("Attribution patching against the exact effects on the margin M (rho: Spearman's; top-k recall of "
                   "the most harmful heads; sign agreement)", provenance) + fitted(body)
    return "\n".join(lines) + "\n"


def table(header_cells: list[str], rows: list[list[str]], what: str, provenance: list[str] | None = None,
          wide: tuple[str, ...] = ()) -> str:
    """Any table of text cells (the decomposition's): booktabs rules, the first column left and the others
    right-aligned; columns named in ``wide`` wrap (tabularx, the table as wide as the line), otherwise the
    table is shrunk to the line only when it is wider."""
    if wide:
        spec = "".join(r">{\raggedright\arraybackslash}X" if h in wide else "l" for h in header_cells)
        begin, end = r"\begin{tabularx}{\linewidth}{@{}" + spec + "@{}}", r"\end{tabularx}"
    else:
        begin, end = r"\begin{tabular}{l" + "r" * (len(header_cells) - 1) + "}", r"\end{tabular}"
    body = [begin, r"\toprule", " & ".join(escape(h) for h in header_cells) + r" \\", r"\midrule"]
    body += [" & ".join(cell(v) for v in row) + r" \\" for row in rows]
    body += [r"\bottomrule", end]
    lines = header(what, provenance)
    if wide:
        lines += [r"\begingroup\footnotesize\setlength{\tabcolsep}{4pt}%", *body, r"\endgroup"]
    else:
        lines += fitted(body)
    return "\n".join(lines) + "\n"
