"""``python -m compute export --run NAME --out DIR``: a run's figure pack, headless.

DESCRIPTION (its --help) says what it writes; the work is done by ``analysis.figures``, which the
dashboard's Export page uses too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from analysis import FORMATS, SIZES  # the package alone: light, so --help stays fast
from compute import store
from compute.errors import InputError
from compute.files import check_out_folder
from compute.store import DEFAULT_DB_TEXT, resolve_db

DESCRIPTION = """\
Write a run's figure pack, headless: every chart of the dashboard's Overview, Layers, Heads and Flow
pages as PNG, SVG and PDF (means_<metric>, change_<metric>, layers_<metric>, blocks_<metric>,
label_accuracy, heads_<group>, flow, confusion_<ablation>); Table 1 with 95% bootstrap intervals and
significance marks as Markdown, LaTeX and CSV (table1.md/.tex/.csv, and table1_<metric>.tex, one metric
for a column); the McNemar tests as CSV; every selection of the run (one row per image x ablation) as CSV
and Parquet; a README listing every file. With --image, also that image's logit charts, its CLS
attention maps (PNG, baseline against --ablation) and its Figure 5 table (the prompt each ablation
selects and the caption that continues it). The dashboard's Export page writes the same files.
--figures picks figures by name or shell pattern ('layers_*,flow'); the tables are written all the same.

--size one-column / two-column lays every figure out for a paper: exactly 252 / 504 pt wide, print fonts,
legends below, a figure too tall for a page or too wide for the column split into parts (_part<K>of<N>).
Every file says where it came from (run, model and revision, experiment hash, tool version, date) where
its format has room (PDF, SVG and PNG metadata, LaTeX and Markdown comments, Parquet metadata); the
README records the rest (CSV) by SHA-256. The LaTeX needs booktabs, graphicx and tabularx and fits the
line it is put in.

Significance (the marks, the colours, mcnemar.csv): Holm-adjusted p < 0.05 over the run's ablations,
McNemar's paired test for accuracy, the paired t-test over images for the scores."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run name (see `python -m compute list`)")
    parser.add_argument("--out", required=True, type=Path, help="folder to write (created if needed)")
    parser.add_argument("--db", type=Path, default=None, help=f"DuckDB store (default: {DEFAULT_DB_TEXT})")
    parser.add_argument("--formats", default=",".join(FORMATS),
                        help=f"comma list of figure formats among {', '.join(FORMATS)} (default: all)")
    parser.add_argument("--confusion", default=None,
                        help="comma list of ablations to draw a confusion chart for, or 'all' "
                        "(default: baseline and the ablation with the lowest accuracy)")
    parser.add_argument("--ablations", default=None,
                        help="comma list of the ablations the per-ablation charts and Table 1 show, in that "
                        "order (default: all, in sweep order); significance is still decided over all")
    parser.add_argument("--figures", default=None,
                        help="comma list of the figures to draw, by name or shell pattern, as the full pack "
                        "names them without extension or part ('layers_*,flow'; default: every figure); the "
                        "tables and selections are written all the same")
    parser.add_argument("--size", default="screen", choices=list(SIZES),
                        help="figure width: screen (as on the dashboard), one-column (3.5 in, 252 pt) or "
                        "two-column (7 in, 504 pt) with print font sizes (default: screen)")
    parser.add_argument("--image", type=int, default=None,
                        help="also this image's logit charts, its Figure 5 table and its CLS attention maps at "
                        "every layer (PNG), baseline against --ablation")
    parser.add_argument("--ablation", default="", help="the ablation --image compares with baseline "
                        "(default: baseline alone)")


def split_ablations(text: str) -> list[str]:
    """A comma list of ablation labels, which may hold commas themselves: "identity:1,5,9,zero:5-8" is
    identity:1,5,9 and zero:5-8 (a piece without a colon continues the label before it)."""
    labels: list[str] = []
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        if labels and ":" not in piece and piece not in ("baseline", "all"):
            labels[-1] += "," + piece
        else:
            labels.append(piece)
    return labels


def main(args: argparse.Namespace) -> int:
    # Imported here: altair and pandas take seconds to import, and every other verb's --help would pay.
    from analysis import figures

    formats = [f.strip().lower() for f in args.formats.split(",") if f.strip()]
    if not formats:  # "" (an empty shell variable): an empty list is a mistake, not "all"
        raise InputError(f"--formats names no format: choose from {', '.join(FORMATS)}")
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise InputError(f"unknown figure format {bad[0]!r}: choose from {', '.join(FORMATS)}")
    picked = [p.strip() for p in args.figures.split(",") if p.strip()] if args.figures is not None else None
    if picked == []:
        raise InputError("--figures names no figure: give a comma list of figure names or patterns, or leave "
                         "--figures out for every figure")
    for flag in ("confusion", "ablations"):
        if getattr(args, flag) is not None and not split_ablations(getattr(args, flag)):
            raise InputError(f"--{flag} names no ablation: give a comma list of the run's ablations, or leave "
                             f"--{flag} out for its default")
    db = resolve_db(args.db)
    if not db.is_file():
        raise InputError(f"no store at {db} (run an experiment first, or pass --db)")
    check_out_folder(args.out)  # before seconds of reading and drawing for a folder that cannot be written
    store.check_store(db, write=False)  # a damaged store is one line, whichever block the pack would read
    confusion = split_ablations(args.confusion) if args.confusion is not None else None
    ablations = split_ablations(args.ablations) if args.ablations is not None else None
    if args.ablation and args.image is None:
        raise InputError("--ablation goes with --image: the image whose attention maps it compares")
    if args.image is not None:  # the attention maps load the run's model: no loading bars from transformers
        from compute.models import quiet_transformers

        quiet_transformers()
    written = figures.write_pack(db, args.run, Path(args.out), formats, confusion, ablations=ablations,
                                 size=args.size, image_id=args.image, image_ablation=args.ablation.strip(),
                                 figures=picked)
    print(f"wrote {len(written)} files to {args.out}")
    return 0
