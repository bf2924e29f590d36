"""What an ablation is: its syntax (``KIND:LAYERS[/TARGET][/HEADS]``), its canonical label, the sweeps, what
``[attribution] kinds`` names (``Spec``), and the plain method (``patched``: swap the chosen attention
modules' forward, rerun the whole model, restore). Importing it imports no torch: compute.config checks an
experiment with it before any model code is loaded.
What each kind computes lives in compute.kinds, the registry; this module names no kind but ``baseline``.
Tests hold the fast engine (compute.engine) to the plain method, and both to transformers' own eager
attention with replaced probabilities.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from compute.errors import InputError
from compute.kinds import (
    HEAD_MEAN_STAT,
    KINDS,
    MEAN_STAT,
    NORMAL,
    LayerMode,
    Means,
    replacement,
)

if TYPE_CHECKING:  # torch is imported where the plain method runs: parsing an ablation needs none (compute.kinds)
    from torch import nn

# --------------------------------------------------------------------------------------------------
# Syntax and labels.

BASELINE = "baseline"
# At config time the model is not known yet; no model has more layers or heads than this, and no text
# may expand a range past it (``identity:1-99999999999999`` fails at once instead of filling memory).
MAX_INDEX = 1024
_LAYERS_RE = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")
_HEADS_RE = re.compile(r"^h\d+(-\d+)?(,h?\d+(-\d+)?)*$")
SYNTAX = "KIND:LAYERS[/TARGET][/HEADS] such as 'identity:1-3', 'zero:6/h0,h3' or 'knockout:9-12/patches>cls'"




@dataclass(frozen=True, order=True)
class Ablation:
    """One intervention on the vision tower: ``kind`` applied to ``heads`` (0-based; () = whole layers) of
    ``layers`` (1-based), with a knockout ``target``. Layers and heads sorted and unique."""

    kind: str  # "baseline" or a key of KINDS
    layers: tuple[int, ...] = ()
    heads: tuple[int, ...] = ()
    target: str = ""

    @property
    def label(self) -> str:
        if self.kind == BASELINE:
            return BASELINE
        text = f"{self.kind}:{format_layers(self.layers)}"
        if self.target:
            text += f"/{self.target}"
        if self.heads:
            text += f"/{format_heads(self.heads)}"
        return text

    def modes(self, n_layers: int) -> tuple[LayerMode, ...]:
        """Per layer (index 0 = layer 1): NORMAL or this ablation's mode."""
        chosen = set(self.layers)
        mode = LayerMode(self.kind, self.heads, self.target)
        return tuple(mode if i + 1 in chosen else NORMAL for i in range(n_layers))

    def __str__(self) -> str:
        return self.label


def format_layers(layers: tuple[int, ...]) -> str:
    """Canonical layer text: ``3``, ``1-3`` for a contiguous run, else ``1,5,9``."""
    if len(layers) > 1 and layers[-1] - layers[0] == len(layers) - 1:
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(str(layer) for layer in layers)


def format_heads(heads: tuple[int, ...]) -> str:
    """Canonical head text: ``h3``, ``h2-4`` for a contiguous run, else ``h0,h3``."""
    if len(heads) > 1 and heads[-1] - heads[0] == len(heads) - 1:
        return f"h{heads[0]}-{heads[-1]}"
    return ",".join(f"h{head}" for head in heads)


def _indices(text: str, spec: str, what: str, low: int, high: int, known: bool) -> tuple[int, ...]:
    """Sorted unique indices of ``1-3,5``-style text, each checked against [low, high] BEFORE any range is
    built. ``known``: high is the model's own bound (else MAX_INDEX)."""
    pairs = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        for number in (lo, hi):  # int() refuses thousands of digits (a ValueError): out of range anyway
            if len(number.lstrip("0")) > 30:
                raise InputError(f"ablation {spec[:60]!r}... is out of range: {what} {number[:30]}... is beyond "
                                 f"any model ({what}s run from {low} to at most {MAX_INDEX})")
        a, b = int(lo), int(hi or lo)
        if a > b:
            raise InputError(f"malformed {what} range {part!r} in ablation {spec!r}: start is after end")
        for value in (a, b):
            if not low <= value <= high:
                bad = value if value < low else max(a, high + 1)
                if known:
                    where = "the vision tower has layers" if what == "layer" else "its layers have heads"
                    raise InputError(f"ablation {spec!r} is out of range: {what} {bad} does not exist "
                                     f"({where} {low}-{high})")
                raise InputError(f"ablation {spec!r} is out of range: {what} {value} is beyond any model "
                                 f"({what}s run from {low} to at most {high})")
        pairs.append((a, b))
    return tuple(sorted({i for a, b in pairs for i in range(a, b + 1)}))


def parse_ablation(text: str, n_layers: int | None = None, n_heads: int | None = None, cls: bool = True) -> Ablation:
    """Parse ``KIND:LAYERS[/TARGET][/HEADS]`` or ``baseline``.

    Layer and head numbers are checked against the model when n_layers / n_heads are given, else against
    MAX_INDEX, before any range is expanded. ``cls``: the tower has a CLS token (False for SigLIP: the
    targets that need one are refused). Raises InputError naming the problem.
    """
    spec = text.strip()
    if spec == BASELINE:
        return Ablation(BASELINE)
    head, *parts = [p.replace(" ", "") for p in spec.split("/")]
    kind, sep, layer_text = head.partition(":")
    if not sep:
        raise InputError(f"malformed ablation {text!r}: expected {SYNTAX}")
    if kind not in KINDS:
        raise InputError(f"unknown ablation kind {kind!r} in {text!r}: known kinds are {', '.join(KINDS)}")
    if not _LAYERS_RE.match(layer_text):
        raise InputError(f"malformed layers {layer_text!r} in ablation {text!r}: use L, A-B or a comma list")
    target, head_text = "", ""
    if "" in parts:
        raise InputError(f"malformed ablation {text!r}: expected {SYNTAX}")
    for i, part in enumerate(parts):
        if part.startswith("h") and i == len(parts) - 1:
            head_text = part
        elif i == 0 and not part.startswith("h") and len(parts) <= 2:
            target = part
        else:
            raise InputError(f"malformed ablation {text!r}: expected {SYNTAX}")
    entry = KINDS[kind]
    if target and not entry.targets:
        takers = ", ".join(name for name, other in KINDS.items() if other.targets)
        raise InputError(f"ablation {text!r}: {kind} takes no target (kinds that take one: {takers})")
    if entry.targets and target not in entry.targets:
        what = f"unknown {kind} target {target!r}" if target else f"{kind} needs a target"
        raise InputError(f"ablation {text!r}: {what}; use one of {', '.join(entry.takes(cls))}")
    if target in entry.cls_targets and not cls:
        instead = " or ".join([*entry.takes(cls=False), "another kind"])
        raise InputError(f"ablation {text!r}: {kind} target {target} needs a CLS token, and this vision tower "
                         f"has none (SigLIP pools every patch with an attention head); use {instead}")
    if head_text and not _HEADS_RE.match(head_text):
        raise InputError(f"malformed heads {head_text!r} in ablation {text!r}: use hH, hA-B or a list such as h0,h3")
    layers = _indices(layer_text, text, "layer", 1, n_layers or MAX_INDEX, n_layers is not None)
    heads = ()
    if head_text:
        high = n_heads - 1 if n_heads is not None else MAX_INDEX
        heads = _indices(head_text.replace("h", ""), text, "head", 0, high, n_heads is not None)
    return Ablation(kind, layers, heads, target)


def check(ablation: Ablation, n_layers: int, n_heads: int | None = None, cls: bool = True) -> None:
    """InputError when ``ablation`` names a layer (or head) the model does not have, or a CLS token a
    tower without one (``cls`` False) lacks."""
    if ablation.kind == BASELINE:
        return
    parse_ablation(ablation.label, n_layers, n_heads, cls)  # the label is short: no huge range to expand


# --------------------------------------------------------------------------------------------------
# Sweeps.

SWEEPS = ("paper", "singles", "heads", "flow", "none")


def sweep(name: str, n_layers: int, n_heads: int | None = None, kind: str = "identity",
          cls: bool = True) -> list[Ablation]:
    """The named sweep for a tower of n_layers (of n_heads each), baseline first, duplicates dropped.

    paper: baseline, every single layer, blocks of 3 and of 4 tiling the depth (a short last block is
    kept), and all layers at once; 21 ablations for 12 layers. singles: baseline and every single layer.
    heads: baseline and ``kind:L/hH`` for every layer L and head H; 145 for 12 x 12. flow: baseline and
    each knockout target at every single layer; 37 for 12 layers, 13 on a tower without a CLS token
    (``cls`` False: patches>patches alone). none: baseline only.
    """
    if name not in SWEEPS:
        raise InputError(f"unknown sweep {name!r}: choose one of {', '.join(SWEEPS)}")
    out = [Ablation(BASELINE)]
    if name in ("paper", "singles"):
        out += [Ablation(kind, (layer,)) for layer in range(1, n_layers + 1)]
    if name == "paper":
        for size in (3, 4):
            for start in range(1, n_layers + 1, size):
                out.append(Ablation(kind, tuple(range(start, min(start + size - 1, n_layers) + 1))))
        out.append(Ablation(kind, tuple(range(1, n_layers + 1))))
    if name == "heads":
        if n_heads is None:
            raise ValueError("the heads sweep needs the number of heads")
        out += [Ablation(kind, (layer,), (head,)) for layer in range(1, n_layers + 1) for head in range(n_heads)]
    if name == "flow":
        out += [Ablation("knockout", (layer,), (), target) for layer in range(1, n_layers + 1)
                for target in KINDS["knockout"].takes(cls)]
    return dedupe(out)


def sweeps(names: str | list[str], n_layers: int, n_heads: int | None = None, cls: bool = True) -> list[Ablation]:
    """Several sweeps in the order given, baseline first, duplicates dropped."""
    names = [names] if isinstance(names, str) else names
    return dedupe([a for name in names for a in sweep(name, n_layers, n_heads, cls=cls)])


def dedupe(ablations: list[Ablation]) -> list[Ablation]:
    # dict keeps first-seen order
    return list(dict.fromkeys(ablations))

# --------------------------------------------------------------------------------------------------
# What ``[attribution] kinds`` names; compute.attribution estimates each spec on every head.

SPEC_SYNTAX = "a kind such as \"identity\", or kind:target for a kind that takes one, such as \"knockout:patches>cls\""


@dataclass(frozen=True, order=True)
class Spec:
    """What ``[attribution] kinds`` names: a kind, with its target when it takes one."""

    kind: str
    target: str = ""

    @property
    def label(self) -> str:
        """``identity``, ``knockout:patches>cls`` (as analysis.heads.group_of names a group of heatmap cells)."""
        return f"{self.kind}:{self.target}" if self.target else self.kind

    def ablation(self, layer: int, head: int) -> Ablation:
        """The head-level ablation an estimate stands for."""
        return Ablation(self.kind, (layer,), (head,), self.target)


def parse_spec(text: str, cls: bool | None = None) -> Spec:
    """``identity`` or ``knockout:patches>cls``; InputError naming the problem. ``cls``: whether the tower has a
    CLS token (None: not known yet; False refuses the targets that need one)."""
    if not isinstance(text, str):
        raise InputError(f"attribution.kinds holds {text!r:.60}: each entry is {SPEC_SYNTAX}")
    kind, _, target = text.strip().replace(" ", "").partition(":")
    if kind not in KINDS:
        raise InputError(f"unknown attribution kind {text!r:.80}: known kinds are {', '.join(KINDS)} (with a target, "
                         f"kind:target, for {', '.join(k for k, v in KINDS.items() if v.targets) or 'none'})")
    entry = KINDS[kind]
    if entry.targets and target not in entry.targets:
        what = f"unknown {kind} target {target!r}" if target else f"{kind} needs a target"
        shown = ", ".join(f"{kind}:{t}" for t in (entry.targets if cls is None else entry.takes(cls)))
        raise InputError(f"attribution kind {text!r:.80}: {what}; use one of {shown}")
    if target and not entry.targets:
        raise InputError(f"attribution kind {text!r:.80}: {kind} takes no target")
    if cls is False and target in entry.cls_targets:
        raise InputError(f"attribution kind {text!r:.80}: {kind} target {target} needs a CLS token, and this vision "
                         f"tower has none (SigLIP); use {', '.join(f'{kind}:{t}' for t in entry.takes(False))} or "
                         f"another kind")
    return Spec(kind, target)


def estimated_ablations(specs: list[Spec], n_layers: int, n_heads: int) -> list[Ablation]:
    """The head-level ablations the estimates stand for, in the order of their columns: spec, layer, head."""
    return [spec.ablation(layer, head) for spec in specs for layer in range(1, n_layers + 1) for head in range(n_heads)]


def attribution_needs(specs: list[Spec], n_layers: int) -> dict[str, set[int]]:
    """The dataset statistics the specs need ({stat: layers}, as compute.ablations.mean_needs): a kind that takes
    a mean reads every layer's per-head mean."""
    if any(KINDS[s.kind].needs_mean for s in specs):
        return {HEAD_MEAN_STAT: set(range(1, n_layers + 1))}
    return {}


# --------------------------------------------------------------------------------------------------
# The plain method: patch the chosen attention modules, run the unchanged model, restore.


def vision_layers(model: nn.Module) -> nn.ModuleList:
    return model.vision_model.encoder.layers


def mean_needs(ablations: list[Ablation]) -> dict[str, set[int]]:
    """The dataset statistics some ablation needs: {stat name: layers}, only names with layers."""
    needs: dict[str, set[int]] = {}
    for a in ablations:
        if a.kind in KINDS and KINDS[a.kind].needs_mean:
            needs.setdefault(HEAD_MEAN_STAT if a.heads else MEAN_STAT, set()).update(a.layers)
    return needs




@contextmanager
def patched(model: nn.Module, ablation: Ablation, means: Means | None = None) -> Iterator[nn.Module]:
    """Within the block, the vision layers of ``ablation`` run its replacement instead of attention.

    Every patched module gets its own ``forward`` back in ``finally``, whatever happens inside. Only encoder
    layers are patched: SigLIP's pooling head always runs as the model runs it.
    """
    from compute.towers import has_cls, n_heads_of

    layers = vision_layers(model)
    cls = has_cls(model)
    check(ablation, len(layers), n_heads_of(model), cls)
    patched_modules: list[nn.Module] = []
    try:
        for layer, mode in enumerate(ablation.modes(len(layers)), start=1):
            if mode == NORMAL:
                continue
            attn = layers[layer - 1].self_attn
            fn = replacement(mode, layer, means, cls)

            def forward(hidden_states, *args, _attn=attn, _fn=fn, **kwargs):
                # CLIPEncoderLayer and SiglipEncoderLayer unpack (attn_output, attn_weights).
                return _fn(_attn, hidden_states, None), None

            attn.forward = forward  # instance attribute shadows the class method
            patched_modules.append(attn)
        yield model
    finally:
        for attn in patched_modules:
            del attn.forward
