"""The chart builders' shared decisions, on their Vega-Lite specs: one colour-blind-safe palette (every colour a
builder writes comes from analysis.charts.PALETTE, the verdict colours or a few fixed greys), significance by
shape and fill as well as colour, accuracy axes zoomed to the data unless asked for 0 to 1, one sign for zero,
equal axes for the embeddings, and the subsets of ablations a page shows at once."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis import charts, heads, subsets, tables

NEUTRAL = {"black", "white", "#555", "#444", charts.GREY, charts.HOLLOW, "transparent"}
ALLOWED = set(charts.PALETTE) | set(charts.SIG_COLOURS) | NEUTRAL
COLOUR_KEYS = ("color", "fill", "stroke")


def ablations_frame(labels: list[str]) -> pd.DataFrame:
    """queries.ablations' columns for canonical labels (kind:layers[/target][/heads])."""
    rows = []
    for k, label in enumerate(labels):
        kind, _, rest = label.partition(":")
        parts = rest.split("/") if rest else []
        layers = parts[0] if parts else ""
        target = next((p for p in parts[1:] if ">" in p), "")
        head = next((p for p in parts[1:] if p.startswith("h")), "")
        first, *_ = (layers.replace("-", ",").split(",") if layers else ["0"])
        n_layers = 0 if not layers else (int(layers.split("-")[1]) - int(layers.split("-")[0]) + 1
                                         if "-" in layers else len(layers.split(",")))
        rows.append({"ablation_id": k, "ablation": label, "kind": kind, "n_layers": n_layers,
                     "first_layer": int(first), "layers": layers, "n_heads": 1 if head else 0,
                     "first_head": int(head[1:]) if head else -1, "heads": head[1:], "target": target})
    return pd.DataFrame(rows)


def summary_frame(labels: list[str], n: int = 200, seed: int = 0, drop: float = 0.0) -> pd.DataFrame:
    """tables.summary_of on random selections: accuracies near 0.9 (so a 0-1 axis would squeeze them)."""
    rng = np.random.default_rng(seed)
    ab = ablations_frame(labels)
    rows = []
    for a in ab["ablation_id"]:
        p = 0.95 - drop * (a % 4) - 0.01 * (a % 3)
        for i in range(n):
            rows.append({"image_id": i, "ablation_id": a, "accuracy": float(rng.random() < p),
                         "score_baseline": 0.3 + 0.01 * rng.standard_normal(), "caption_score": np.nan})
    return tables.summary_of(ab, pd.DataFrame(rows))


PAPER = ["baseline", *(f"identity:{k}" for k in range(1, 13)), "identity:1-3", "identity:4-6", "identity:7-12",
         "zero:5-8"]


def walk(spec, found: list) -> None:
    """Every colour a spec writes (mark colours, encoding values and scale ranges) into ``found``."""
    if isinstance(spec, dict):
        for key, value in spec.items():
            if key in COLOUR_KEYS and isinstance(value, str) and (value.startswith("#") or value.isalpha()):
                found.append(value)
            if key in COLOUR_KEYS and isinstance(value, dict):
                scale = value.get("scale") or {}
                found.extend(c for c in scale.get("range", []) if isinstance(c, str))
                if value.get("type") == "nominal":
                    assert "range" in scale, f"a nominal {key} without the palette: {value}"
                    assert "scheme" not in scale
                if "value" in value and isinstance(value["value"], str):
                    found.append(value["value"])
            walk(value, found)
    elif isinstance(spec, list):
        for item in spec:
            walk(item, found)


def screen_charts() -> dict[str, object]:
    summary = summary_frame(PAPER, drop=0.05)
    heads_summary = summary_frame(["baseline", *(f"identity:{la}/h{h}" for la in (1, 2) for h in range(4)),
                                   *(f"knockout:{la}/{t}" for la in (1, 2) for t in ("patches>cls", "cls>patches"))],
                                  drop=0.02)
    tests = tables.mcnemar_of(heads_summary)
    scores = pd.DataFrame([{"ablation_id": a, "ablation": name, "prompt_id": p, "prompt": f"a photo of {x}",
                            "label": x, "logit": float(a + p), "prob": 0.5}
                           for a, name in enumerate(["baseline", "identity:1"]) for p, x in enumerate(["a", "b"])])
    picks = pd.DataFrame({"ablation": ["baseline", "identity:1"], "selected_prompt": ["a photo of a", "a photo of b"]})
    moves = pd.DataFrame({"image_id": range(6), "label": list("abcabc"), "selected": list("aabbcc"),
                          "correct": ["right", "wrong"] * 3, "cosine": 0.9, "x0": np.arange(6.0), "y0": 0.1,
                          "x1": np.arange(6.0) + 0.2, "y1": 0.3})
    pairs = pd.DataFrame({"ablation": ["baseline", "identity:1"], "accuracy_a": [0.9, 0.85],
                          "accuracy_b": [0.91, 0.8], "change": [charts.SIG_NAMES[0], charts.SIG_NAMES[-1]]})
    curves = pd.concat([tables.depth_curve(summary, "a", 12), tables.depth_curve(summary, "b", 24)])
    return {
        "table1": charts.table1_chart(summary), "change": charts.change_chart(summary),
        "layer_curve": charts.layer_curve(summary), "block_bars": charts.block_bars(summary),
        "label_heatmap": charts.label_heatmap(pd.DataFrame({"ablation_id": [0, 1], "label": ["a", "a"], "images": 3,
                                                            "accuracy": [0.5, 0.6]}), ablations_frame(PAPER[:2])),
        "logit_heatmap": charts.logit_heatmap(scores, picks, "identity:1"),
        "logit_bars": charts.logit_bars(scores, ["baseline", "identity:1"]),
        "compare": charts.compare_chart(pd.DataFrame({"label": ["a", "b"], "images": 2, "accuracy_a": 0.5,
                                                      "accuracy_b": [0.4, 0.7], "difference": [-0.1, 0.2]}), "A", "B"),
        "paired": charts.paired_accuracy_chart(pairs, "A", "B"),
        "lab": charts.lab_accuracy_chart(pd.DataFrame({"ablation": ["baseline"], "accuracy": [0.9],
                                                       "run_accuracy": [0.8], "verdict": [1]})),
        "depth": charts.relative_depth_chart(curves),
        "embedding": charts.embedding_chart(moves, "label", "true label", "identity:1"),
        "movement": charts.movement_bars(pd.DataFrame({"ablation": ["baseline", "identity:1"], "cosine": [1, 0.9],
                                                       "images": 3})),
        "heads": charts.head_heatmap(heads.head_cells(heads_summary, tests, "identity", "accuracy")),
        "flow": charts.flow_chart(heads.flow_cells(heads_summary, tests, "accuracy")),
    }


def test_every_screen_chart_takes_its_colours_from_the_one_palette():
    colours = {}
    for name, chart in screen_charts().items():
        spec = chart.to_dict()  # validates
        found: list[str] = []
        walk(spec, found)
        assert set(found) <= ALLOWED, (name, set(found) - ALLOWED)
        colours[name] = set(found)
    # The charts that colour categories or verdicts do so from the palette (not Vega's or the theme's defaults).
    for name in ("table1", "change", "layer_curve", "block_bars", "logit_bars", "paired", "depth", "embedding",
                 "movement", "flow", "compare"):
        assert colours[name] & (set(charts.PALETTE) | set(charts.SIG_COLOURS)), name
    # Okabe & Ito's eight colours, blue first; the verdicts lower / not / higher in vermillion, grey and blue.
    assert charts.PALETTE[:4] == ["#0072B2", "#E69F00", "#009E73", "#D55E00"] and len(set(charts.PALETTE)) == 8
    assert [charts.PALETTE[3], charts.GREY, charts.PALETTE[0]] == charts.SIG_COLOURS


def test_significance_is_told_by_shape_and_fill_as_well_as_colour():
    spec = charts.change_chart(summary_frame(PAPER, drop=0.05), ["accuracy"]).to_dict()
    (points,) = [layer for layer in spec["layer"] if layer["mark"]["type"] == "point"]
    enc = points["encoding"]
    assert enc["shape"]["field"] == "change" and enc["shape"]["scale"]["range"] == charts.SIG_SHAPES
    assert enc["fill"]["condition"]["test"] == 'datum.change !== "not significant"'
    assert enc["fill"]["value"] == charts.HOLLOW  # hollow and white-filled: a rule behind it cannot hide it
    flow = screen_charts()["flow"].to_dict()
    (marks,) = [layer for layer in flow["layer"] if layer["mark"]["type"] == "point"]
    assert marks["encoding"]["shape"]["field"] == "verdict" and marks["encoding"]["fill"]["value"] == charts.HOLLOW
    assert flow["layer"][0]["mark"]["type"] == "rule"  # the zero line first: the points are drawn over it


def y_domain(layered: dict, field: str = "mean") -> list[float]:
    for layer in layered["layer"]:
        for channel in ("y", "x"):
            enc = layer.get("encoding", {}).get(channel, {})
            if enc.get("field") == field and "scale" in enc:
                return enc["scale"].get("domain")
    raise AssertionError(f"no scale for {field}")


def test_accuracy_axes_zoom_to_the_data_unless_asked_for_0_to_1():
    summary = summary_frame(PAPER)  # accuracies between about 0.85 and 0.97
    singles = summary[tables.single_layers(summary)]
    lo, hi = float(singles["accuracy_lo"].min()), float(singles["accuracy_hi"].max())
    zoomed = y_domain(charts.layer_curve(summary).to_dict())
    assert 0 < zoomed[0] <= lo and hi <= zoomed[1] <= 1 and zoomed[1] - zoomed[0] < 0.5
    assert y_domain(charts.layer_curve(summary, "accuracy", True).to_dict()) == [0, 1]
    assert y_domain(charts.block_bars(summary, "accuracy", True).to_dict()) == [0, 1]
    blocks = y_domain(charts.block_bars(summary).to_dict())
    assert blocks[0] > 0 and blocks[1] - blocks[0] < 0.5
    # The baseline line stays inside the axis; accuracy never leaves 0-1 however wide the padding.
    assert charts.zoom([0.999, 1.0]).to_dict()["domain"][1] == 1.0
    assert charts.zoom([0.0, 0.01]).to_dict()["domain"][0] == 0.0
    assert "axis zoomed to the data" in str(charts.layer_curve(summary).to_dict()["title"])


def test_a_change_of_zero_has_one_form():
    assert [charts.signed(x) for x in (-0.001, 0.0, 0.004, -0.0, 0.031, -0.25)] == [
        "0.00", "0.00", "0.00", "0.00", "+0.03", "\u22120.25"]
    assert [tables.number(x, sign=True) for x in (-0.0001, 0.0, 0.0002, 0.017)] == ["0.000", "0.000", "0.000", "+0.017"]


def test_a_heatmap_labels_its_cells_with_two_significant_digits_of_its_largest_change():
    """One image of 600 changes accuracy by 0.0017: with a grid of such changes every shaded cell's label reads
    non-zero; a grid of large changes keeps two decimals."""
    def labels(changes: list[float], chart=charts.head_heatmap, field: str = "change") -> list[str]:
        cells = pd.DataFrame({"ablation": [f"identity:1/h{h}" for h in range(len(changes))], "layer": 1,
                              "head": range(len(changes)), "images": 600, field: changes,
                              "lo": [c - 0.01 for c in changes], "hi": [c + 0.01 for c in changes],
                              "p_holm": 1.0, "holds": False, "exact": np.nan})
        spec = chart(cells).to_dict()
        rows = next(iter(spec["datasets"].values()))
        return [r[f"{field}_text"] for r in rows]

    M = "\u2212"
    assert labels([-0.0117, -0.0033, 0.0, 0.0017]) == [f"{M}0.012", f"{M}0.003", "0.000", "+0.002"]
    assert labels([-0.3, 0.05, -0.004]) == [f"{M}0.30", "+0.05", "0.00"]
    assert labels([0.0, 0.0]) == ["0.00", "0.00"]
    assert labels([-0.005, -0.0017]) == [f"{M}0.005", f"{M}0.002"]  # at most 3 decimals, as the tables
    assert labels([-1.4, 0.02], charts.estimate_heatmap, "estimate") == [f"{M}1.40", "+0.02"]  # logits
    assert labels([-0.06, 0.02], charts.estimate_heatmap, "estimate") == [f"{M}0.060", "+0.020"]


def test_the_embedding_scatter_is_square_with_equal_units_and_a_pair_per_category():
    moves = pd.DataFrame({"image_id": range(70), "label": [f"c{k}" for k in range(70)], "cosine": 0.9,
                          "x0": np.linspace(-3, 3, 70), "y0": np.linspace(-0.2, 0.2, 70),
                          "x1": np.linspace(-3, 3, 70), "y1": 0.0})
    spec = charts.embedding_chart(moves, "label", "true label", "identity:1").to_dict()
    assert spec["width"] == spec["height"] and spec["autosize"]["type"] == "pad"
    x, y = spec["layer"][0]["encoding"]["x"]["scale"]["domain"], spec["layer"][0]["encoding"]["y"]["scale"]["domain"]
    assert x[1] - x[0] == pytest.approx(y[1] - y[0])  # one unit as long across as up
    cats = charts.embedding_categories(moves["label"])
    assert cats.nunique() == charts.MAX_CATEGORIES + 1 and charts.OTHER in set(cats)
    pairs = {(charts.PALETTE[k % len(charts.PALETTE)], charts.SHAPES[k % len(charts.SHAPES)])
             for k in range(charts.MAX_CATEGORIES + 1)}
    assert len(pairs) == charts.MAX_CATEGORIES + 1  # no two categories share a colour and a shape


def test_subsets_keep_each_axis_readable_and_cover_every_ablation():
    heads_run = (["baseline"] + [f"identity:{la}/h{h}" for la in range(1, 13) for h in range(4)]
                 + [f"knockout:{la}/{t}" for la in range(1, 13) for t in ("patches>cls", "cls>patches", "patches>patches")]
                 + ["knockout:3-4/patches>cls", "knockout:1-12/patches>cls", "knockout:1-12/cls>patches",
                    "knockout:1-12/patches>patches"])
    assert len(heads_run) == 89  # the demo's heads run
    groups = subsets.subsets(ablations_frame(heads_run))
    assert all(0 < len(members) <= subsets.MAX_LABELS for members in groups.values())
    flat = [a for members in groups.values() for a in members]
    assert sorted(flat) == sorted(heads_run[1:]) and len(flat) == len(set(flat))  # each once, baseline apart
    assert list(groups) == ["identity, one head, layers 1-6", "identity, one head, layers 7-12",
                            "knockout patches>cls, one layer", "knockout cls>patches, one layer",
                            "knockout patches>patches, one layer", "knockout, several layers"]
    assert subsets.subset_of(groups, "identity:9/h2") == "identity, one head, layers 7-12"
    assert subsets.shown(groups, "knockout, several layers", "baseline")[0] == "baseline"
    assert subsets.subsets(ablations_frame(PAPER)) == {subsets.EVERY: PAPER[1:]}  # a small run: no chooser
