"""The Heads and Flow tables on small hand-made frames: which cells they keep, the significance the summary
decided (one rule on every page), and the click that picks an ablation."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis import charts, heads, stats


def _summary(rows: list[tuple]) -> pd.DataFrame:
    """rows: (ablation, kind, layers, heads, target); the change of accuracy is -0.01 x ablation_id."""
    out = []
    for i, (label, kind, layers, head_list, target) in enumerate(rows):
        out.append({"ablation_id": i, "ablation": label, "kind": kind, "n_layers": len(layers),
                    "first_layer": layers[0] if layers else 0, "n_heads": len(head_list),
                    "first_head": head_list[0] if head_list else -1, "target": target, "images": 100,
                    "d_accuracy": -0.01 * i, "d_accuracy_lo": -0.01 * i - 0.02, "d_accuracy_hi": -0.01 * i + 0.02,
                    "p_accuracy": P.get(i, float("nan"))})  # baseline: no test
    frame = pd.DataFrame(out)
    frame["p_holm_accuracy"] = stats.holm(frame["p_accuracy"].to_numpy())  # over the run's ablations
    frame["sig_accuracy"] = [stats.verdict(d, p) for d, p in zip(frame["d_accuracy"], frame["p_holm_accuracy"],
                                                                  strict=True)]
    return frame


ROWS = [("baseline", "baseline", (), (), ""), ("identity:1/h0", "identity", (1,), (0,), ""),
        ("identity:1/h1", "identity", (1,), (1,), ""), ("identity:2/h0", "identity", (2,), (0,), ""),
        ("identity:2", "identity", (2,), (), ""), ("identity:1-2/h0", "identity", (1, 2), (0,), ""),
        ("zero:2/h1", "zero", (2,), (1,), ""), ("knockout:1/patches>cls", "knockout", (1,), (), "patches>cls"),
        ("knockout:1/cls>patches", "knockout", (1,), (), "cls>patches"),
        ("knockout:2/patches>cls/h1", "knockout", (2,), (1,), "patches>cls")]
# McNemar's p per ablation: two of the three identity heads are small, one is not.
P = {1: 0.001, 2: 0.03, 3: 0.2, 4: 0.0001, 5: 0.0001, 6: 0.04, 7: 0.01, 8: 0.02, 9: 0.001}


def _tests() -> pd.DataFrame:
    return pd.DataFrame({"ablation_id": list(P), "only_baseline": 5, "only_ablation": 0, "p": list(P.values())})


def test_head_cells_keep_single_heads_of_single_layers_with_the_summarys_verdicts():
    summary = _summary(ROWS)
    assert heads.head_groups(summary) == ["identity", "zero", "knockout:patches>cls"]
    cells = heads.head_cells(summary, _tests(), "identity", "accuracy")
    assert list(cells["ablation"]) == ["identity:1/h0", "identity:1/h1", "identity:2/h0"]
    assert list(zip(cells["layer"], cells["head"], strict=True)) == [(1, 0), (1, 1), (2, 0)]
    assert list(cells["change"]) == pytest.approx([-0.01, -0.02, -0.03])
    # Holm over every ablation of the run, as the Overview counts them: the same marks on every page.
    adjusted = stats.holm(list(P.values()))  # ablations 1..9; baseline is not a test
    assert list(cells["p_holm"]) == pytest.approx(list(adjusted[0:3]))
    assert list(cells["holds"]) == [True, False, False]  # 0.007 < 0.05; 0.09 and 0.2 do not
    knocked = heads.head_cells(summary, _tests(), "knockout:patches>cls", "accuracy")
    assert list(knocked["ablation"]) == ["knockout:2/patches>cls/h1"]


def test_flow_cells_keep_whole_single_layer_knockouts():
    cells = heads.flow_cells(_summary(ROWS), _tests(), "accuracy")
    assert list(cells["ablation"]) == ["knockout:1/patches>cls", "knockout:1/cls>patches"]
    assert list(cells["target"]) == ["patches>cls", "cls>patches"]
    adjusted = stats.holm(list(P.values()))
    assert list(cells["p_holm"]) == pytest.approx([adjusted[6], adjusted[7]])


def test_the_heatmap_outlines_exactly_the_cells_that_hold_and_selects_by_ablation():
    cells = heads.head_cells(_summary(ROWS), _tests(), "identity", "accuracy")
    spec = charts.head_heatmap(cells, "accuracy", "identity").to_dict()
    outline = next(layer for layer in spec["layer"] if layer.get("transform"))
    assert outline["transform"] == [{"filter": "datum.holds"}] and outline["mark"]["stroke"] == "black"
    assert [p["select"]["fields"] for p in spec["params"]] == [["ablation"]]
    charts.flow_chart(heads.flow_cells(_summary(ROWS), _tests(), "accuracy"), "accuracy").to_dict()  # validates


@pytest.mark.parametrize("event, picked", [
    ({"selection": {"cell": [{"ablation": "identity:8/h2"}]}}, "identity:8/h2"),
    ({"selection": {"cell": []}}, None),
    ({"selection": {}}, None),
    (None, None),
])
def test_a_click_picks_the_cells_ablation(event, picked):
    assert heads.picked_ablation(event) == picked
