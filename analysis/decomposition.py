"""The decomposition's read side, Streamlit-free: which components a lab preset names (the Decomposition
page's mean-ablation lab and the export use them with ``analysis.queries.mean_ablation``).

What the store holds (compute.decomposition; the views ``contributions``, ``effects``, ``head_descriptions``):
per decomposed image its |e|, each component's share of each prompt's baseline logit, each non-baseline
ablation's direct effect per prompt (total and indirect in the view), the vectors T(c) / |e| and the direct
changes / |e| in the joint space (for new prompts: compute.decomposition.shares_of), and TextSpan's texts for
the heads of the last layers.
"""

from __future__ import annotations

import pandas as pd

PRESETS = ("all but the last N layers", "all MLPs", "all attention", "all heads of the last N layers")


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
