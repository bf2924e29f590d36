"""``python -m compute export --run NAME --out DIR``: a run's figure pack, headless.

Writes every chart of the dashboard's Overview and Layers pages as PNG, SVG and PDF (Altair's save through
vl-convert), Table 1 with its 95% bootstrap intervals as Markdown, LaTeX and CSV, the McNemar tests as
CSV, every selection of the run (one row per image x ablation) as CSV and Parquet, and with ``--image`` that
image's logits and CLS attention maps (baseline against ``--ablation``). The work is done by
``dashboard.figures``, which the dashboard's Export page uses too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from compute.errors import InputError
from compute.store import DEFAULT_DB_TEXT, resolve_db

FORMATS = ("png", "svg", "pdf")  # as dashboard.figures.FORMATS; spelled here so --help stays light


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run name (see `python -m compute list`)")
    parser.add_argument("--out", required=True, type=Path, help="folder to write (created if needed)")
    parser.add_argument("--db", type=Path, default=None, help=f"DuckDB store (default: {DEFAULT_DB_TEXT})")
    parser.add_argument("--formats", default=",".join(FORMATS),
                        help=f"comma list of figure formats among {', '.join(FORMATS)} (default: all)")
    parser.add_argument("--confusion", default="",
                        help="comma list of ablations to draw a confusion chart for, or 'all' "
                        "(default: baseline and the ablation with the lowest accuracy)")
    parser.add_argument("--image", type=int, default=None,
                        help="also this image's logit charts and its CLS attention maps at every layer (PNG), "
                        "baseline against --ablation")
    parser.add_argument("--ablation", default="", help="the ablation --image compares with baseline "
                        "(default: baseline alone)")


def main(args: argparse.Namespace) -> int:
    # Imported here: altair, pandas and the dashboard take seconds to import, and every other verb's
    # --help would pay for them.
    from dashboard import figures

    formats = [f.strip().lower() for f in args.formats.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise InputError(f"unknown figure format {bad[0] if bad else args.formats!r}: choose from {', '.join(FORMATS)}")
    db = resolve_db(args.db)
    if not db.is_file():
        raise InputError(f"no store at {db} (run an experiment first, or pass --db)")
    confusion = [c.strip() for c in args.confusion.split(",") if c.strip()] or None
    if args.ablation and args.image is None:
        raise InputError("--ablation goes with --image: the image whose attention maps it compares")
    written = figures.write_pack(db, args.run, Path(args.out), formats, confusion, args.image, args.ablation)
    print(f"wrote {len(written)} files to {args.out}")
    return 0
