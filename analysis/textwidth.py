"""How wide a string is in the figures' font: Liberation Sans, whose advance widths vl-convert (Vega's text
measurement and its SVG, PNG and PDF renderers) uses for "sans-serif".

Print layouts wrap titles and size plots with it (analysis.print_layout), and the figure checks measure
every text box of an exported SVG with it (tools/figure_check.py). The widths are the font's own advance
widths in thousandths of an em (Liberation Sans is metric-compatible with Arial/Helvetica); a test checks
them against vl-convert's measurement. A character outside the table counts as a full em, wider than any
glyph here, so a box is never measured too small.
"""

from __future__ import annotations

# Advance widths of the printable ASCII characters (32 ' ' to 126 '~'), thousandths of an em.
_REGULAR = [
    278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278, 556, 556, 556, 556,
    556, 556, 556, 556, 556, 556, 278, 278, 584, 584, 584, 556, 1015, 667, 667, 722, 722, 667, 611, 778,
    722, 278, 500, 667, 556, 833, 722, 778, 667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 278,
    278, 278, 469, 556, 333, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833, 556, 556,
    556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584
]
_BOLD = [
    278, 333, 474, 556, 556, 889, 722, 238, 333, 333, 389, 584, 278, 333, 278, 278, 556, 556, 556, 556,
    556, 556, 556, 556, 556, 556, 333, 333, 584, 584, 584, 611, 975, 722, 722, 722, 722, 667, 611, 778,
    722, 278, 556, 722, 611, 833, 722, 778, 667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 333,
    278, 333, 584, 556, 333, 556, 611, 556, 611, 556, 333, 611, 611, 278, 278, 556, 278, 889, 611, 611,
    611, 611, 389, 556, 333, 611, 556, 778, 556, 556, 500, 389, 280, 389, 584
]
_REGULAR_MORE = {'Δ': 668, 'δ': 557, 'σ': 617, 'μ': 576, 'α': 578, 'β': 575, 'γ': 500, 'λ': 500, 'π': 690, 'Σ': 618, '−': 584, '–': 556, '—': 1000, '…': 1000, '×': 584, '·': 278, '°': 400, '±': 549, '≤': 549, '≥': 549, '→': 1000, '←': 1000, '√': 549, '•': 350, '’': 222, '‘': 222, '“': 333, '”': 333, 'é': 556, 'è': 556, 'à': 556, 'ü': 556, 'ö': 556, 'ä': 556, 'ñ': 556, 'ç': 500, '²': 333, '³': 333}
_BOLD_MORE = {'Δ': 719, 'δ': 606, 'σ': 684, 'μ': 612, 'α': 615, 'β': 610, 'γ': 556, 'λ': 556, 'π': 766, 'Σ': 600, '−': 584, '–': 556, '—': 1000, '…': 1000, '×': 584, '·': 278, '°': 400, '±': 549, '≤': 549, '≥': 549, '→': 1000, '←': 1000, '√': 549, '•': 350, '’': 278, '‘': 278, '“': 500, '”': 500, 'é': 556, 'è': 556, 'à': 556, 'ü': 611, 'ö': 611, 'ä': 556, 'ñ': 611, 'ç': 556, '²': 333, '³': 333}
UNKNOWN = 1000  # a character outside the tables: a full em

ASCENT = 0.75  # of the font size above the baseline: capitals, digits and ascenders (0.73 em) with a margin
DESCENT = 0.21  # below it: descenders (0.21 em)


def _table(bold: bool) -> dict[str, int]:
    widths = _BOLD if bold else _REGULAR
    return {chr(32 + k): w for k, w in enumerate(widths)} | (_BOLD_MORE if bold else _REGULAR_MORE)


_TABLES = {False: _table(False), True: _table(True)}


def text_width(text: str, size: float, bold: bool = False) -> float:
    """The width of ``text`` set in Liberation Sans at ``size`` points (or pixels), without kerning, as Vega
    measures it."""
    table = _TABLES[bool(bold)]
    return sum(table.get(ch, UNKNOWN) for ch in text) * size / 1000


def wrap(text: str, size: float, width: float, bold: bool = False) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` (a single word wider than that stays
    whole on its own line)."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and text_width(lines[-1] + " " + word, size, bold) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines or [""]
