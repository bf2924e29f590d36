"""``python -m compute screen --run NAME --top K [--kind SPEC]``: the heads whose ablation a stored run's
attribution estimates most harmful, as the ``extra`` list of an experiment that sweeps them exactly.

Screening (docs/attribution.md): estimate every head over a whole dataset with ``[attribution]`` (one forward
and one backward pass per image), then run the exact sweep on only the K heads the estimates rank highest:
paste the printed ``extra`` into an experiment with ``sweep = "none"`` over the same (or another) dataset.
"Most harmful" is the lowest mean estimate over the run's images: the largest predicted fall of the margin M
between the baseline's selected prompt and its runner-up.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from compute import store
from compute.errors import InputError
from compute.store import DEFAULT_DB_TEXT, resolve_db
from compute.validation import MAX_ABLATIONS, check_count, printable

DESCRIPTION = """\
Print the `extra` list of the K heads whose ablation RUN's attribution ([attribution] kinds) estimates most
harmful: the lowest mean estimate of the change in the margin M (the baseline's selected prompt's logit minus
its runner-up's) over the run's images. Paste it under [ablations] (with sweep = "none") to sweep exactly
only those heads. --kind picks one of the run's attributed kinds (default: its first)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="a run with [attribution] estimates")
    parser.add_argument("--top", type=int, required=True, help="how many heads to list (K)")
    parser.add_argument("--kind", default="", help="the attributed kind, as the run's [attribution] kinds name it "
                        "(identity, zero, knockout:patches>cls, ...; default: the run's first)")
    parser.add_argument("--db", type=Path, default=None, help=f"DuckDB store (default: {DEFAULT_DB_TEXT})")


def screened(rows: list[tuple], kind: str, top: int) -> list[tuple]:
    """The ``top`` rows of store.mean_estimates for ``kind``, the most harmful first."""
    return [r for r in rows if r[0] == kind][:top]


def main(args: argparse.Namespace) -> int:
    top = check_count(args.top, "--top", MAX_ABLATIONS, "heads")
    db = resolve_db(args.db)
    if not db.is_file():
        raise InputError(f"no store at {db} (run an experiment first, or pass --db)")
    store.check_store(db, write=False)
    with store.connect(db, read_only=True) as con:
        row = store.require_run(con, args.run)
        rows = store.mean_estimates(con, row.run_id)
    kinds = list(dict.fromkeys(r[0] for r in rows))
    if not kinds:
        raise InputError(f"run {args.run!r} has no attribution estimates: add [attribution] kinds = [\"identity\"] to "
                         f"its experiment and run it again (the images it has done are attributed then)")
    kind = args.kind.strip().replace(" ", "") or kinds[0]
    if kind not in kinds:
        raise InputError(f"run {args.run!r} has no estimates of {kind}: it has {', '.join(kinds)}")
    chosen = screened(rows, kind, top)
    images = max(r[5] for r in chosen)
    print(f"# the {len(chosen)} heads whose {kind} ablation the attribution of run {printable(args.run)!r} estimates "
          f"most harmful to the margin M (mean over {images:,} images, lowest first):")
    for _, label, layer, head, mean, _ in chosen:
        print(f"#   {label:<28} layer {layer:>3}  head {head:>3}  mean estimate {mean:+.4f}")
    print('# paste under [ablations] with sweep = "none" to sweep them exactly')
    print("extra = [" + ", ".join(json.dumps(r[1]) for r in chosen) + "]")
    return 0
