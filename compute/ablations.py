"""What an ablation is: its syntax, its canonical label, the sweeps, and the small functions that replace
a vision layer's attention block.

An attention replacement is a plain function ``fn(attn, x, **ctx) -> out``: ``attn`` is the layer's
``CLIPAttention`` module, ``x`` the layer-normed input (batch, tokens, width) and ``out`` what the attention
block hands to the residual add, same shape. A new kind is one such function and one line in ``KINDS``.
Two consumers apply them: ``patched()`` below (the plain method: swap the modules' forward, rerun the whole
model) and ``compute.engine`` (the fast sweep). Tests hold the second to the first.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from compute.errors import InputError

# --------------------------------------------------------------------------------------------------
# Attention replacements. x: (batch, tokens, width) layer-normed input; returns (batch, tokens, width).


def identity_attention(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # Attention probabilities = identity: each token keeps its own value vector, so queries, keys and the
    # softmax are never needed.
    return attn.out_proj(attn.v_proj(x))


def zero_attention(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # Only the residual path carries on.
    return torch.zeros_like(x)


def uniform_attention(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # Every token attends equally to all tokens: the mean of the values, then out_proj.
    v = attn.v_proj(x).mean(dim=1, keepdim=True)  # (batch, 1, width)
    return attn.out_proj(v).expand_as(x)


def mean_attention(attn: nn.Module, x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    # mean: (tokens, width), this layer's attention output per position averaged over the run's dataset on
    # an unablated pass. The caller slices it to the positions x holds (position 0 first).
    return mean[: x.shape[1]].to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)


@dataclass(frozen=True)
class Kind:
    fn: Callable[..., torch.Tensor]
    # tokenwise: a token's output depends on that token alone, so the engine may compute only the tokens
    # it still needs (the CLS token near the end of the tower).
    tokenwise: bool
    # needs_mean: the function takes mean=(tokens, width), a dataset statistic of the unablated model.
    needs_mean: bool = False


KINDS: dict[str, Kind] = {
    "identity": Kind(identity_attention, tokenwise=True),
    "zero": Kind(zero_attention, tokenwise=True),
    "mean": Kind(mean_attention, tokenwise=True, needs_mean=True),
    "uniform": Kind(uniform_attention, tokenwise=False),
}

# --------------------------------------------------------------------------------------------------
# Syntax and labels.

BASELINE = "baseline"
MAX_LAYERS = 1_000  # deeper than any vision tower: numbers are checked against it before a range is expanded
_LAYERS_RE = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


@dataclass(frozen=True, order=True)
class Ablation:
    """One intervention on the vision tower: ``kind`` applied to ``layers`` (1-based, sorted, unique)."""

    kind: str  # "baseline" or a key of KINDS
    layers: tuple[int, ...] = ()

    @property
    def label(self) -> str:
        if self.kind == BASELINE:
            return BASELINE
        return f"{self.kind}:{format_layers(self.layers)}"

    def modes(self, n_layers: int) -> tuple[str, ...]:
        """Per layer (index 0 = layer 1): "normal" or the kind."""
        chosen = set(self.layers)
        return tuple(self.kind if i + 1 in chosen else "normal" for i in range(n_layers))

    def __str__(self) -> str:
        return self.label


def format_layers(layers: tuple[int, ...]) -> str:
    """Canonical layer text: ``3``, ``1-3`` for a contiguous run, else ``1,5,9``."""
    if len(layers) > 1 and layers[-1] - layers[0] == len(layers) - 1:
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(str(layer) for layer in layers)


def parse_ablation(text: str, n_layers: int | None = None) -> Ablation:
    """Parse ``identity:3``, ``zero:1-3``, ``mean:1,5,9`` or ``baseline``; check layers when n_layers given."""
    spec = text.strip()
    if spec == BASELINE:
        return Ablation(BASELINE)
    kind, sep, layer_text = spec.partition(":")
    kind = kind.strip()
    if not sep:
        raise InputError(f"malformed ablation {text!r}: expected KIND:LAYERS such as 'identity:1-3'")
    if kind not in KINDS:
        raise InputError(f"unknown ablation kind {kind!r} in {text!r}: known kinds are {', '.join(KINDS)}")
    layer_text = layer_text.replace(" ", "")
    if not _LAYERS_RE.match(layer_text):
        raise InputError(f"malformed layers {layer_text!r} in ablation {text!r}: use L, A-B or a comma list")
    layers: set[int] = set()
    for part in layer_text.split(","):
        lo, _, hi = part.partition("-")
        for number in (lo, hi):  # checked before range() allocates anything; the model's depth below
            if len(number.lstrip("0")) > len(str(MAX_LAYERS)) or (number and int(number) > MAX_LAYERS):
                raise InputError(f"ablation {text.strip()!r:.80} is out of range: layer {number:.30} does not "
                                 f"exist (a vision tower has at most {MAX_LAYERS} layers)")
        a, b = int(lo), int(hi or lo)
        if a > b:
            raise InputError(f"malformed layer range {part!r} in ablation {text!r}: start is after end")
        layers.update(range(a, b + 1))
    ablation = Ablation(kind, tuple(sorted(layers)))
    if n_layers is not None:
        check_layers(ablation, n_layers)
    return ablation


def check_layers(ablation: Ablation, n_layers: int) -> None:
    bad = [layer for layer in ablation.layers if not 1 <= layer <= n_layers]
    if bad:
        raise InputError(
            f"ablation {ablation.label!r} is out of range: layer {bad[0]} does not exist "
            f"(the vision tower has layers 1-{n_layers})"
        )


# --------------------------------------------------------------------------------------------------
# Sweeps.

SWEEPS = ("paper", "singles", "none")


def sweep(name: str, n_layers: int, kind: str = "identity") -> list[Ablation]:
    """The named sweep for a tower of n_layers, baseline first, duplicates dropped, in reading order.

    paper: baseline, every single layer, blocks of 3 and of 4 tiling the depth (a short last block is
    kept), and all layers at once. For 12 layers that is 21 ablations.
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
    return dedupe(out)


def dedupe(ablations: list[Ablation]) -> list[Ablation]:
    # dict keeps first-seen order
    return list(dict.fromkeys(ablations))


# --------------------------------------------------------------------------------------------------
# The plain method: patch the chosen attention modules, run the unchanged model, restore.


def vision_layers(model: nn.Module) -> nn.ModuleList:
    return model.vision_model.encoder.layers


def mean_layers(ablations: list[Ablation]) -> set[int]:
    """Layers whose dataset-mean attention output some ablation needs."""
    return {layer for a in ablations if a.kind in KINDS and KINDS[a.kind].needs_mean for layer in a.layers}


def replacement(kind: str, layer: int, means: dict[int, torch.Tensor] | None) -> Callable:
    """The function (attn, x) -> out that an ablation of ``kind`` puts in place of ``layer``'s attention."""
    spec = KINDS[kind]
    if not spec.needs_mean:
        return spec.fn
    if not means or layer not in means:
        raise ValueError(f"{kind}:{layer} needs the dataset mean of layer {layer}'s attention output")
    return partial(spec.fn, mean=means[layer])


@contextmanager
def patched(
    model: nn.Module, ablation: Ablation, means: dict[int, torch.Tensor] | None = None
) -> Iterator[nn.Module]:
    """Within the block, the vision layers of ``ablation`` run its replacement instead of attention.

    Every patched module gets its own ``forward`` back in ``finally``, whatever happens inside.
    """
    layers = vision_layers(model)
    if ablation.kind != BASELINE:
        check_layers(ablation, len(layers))
    patched_modules: list[nn.Module] = []
    try:
        for layer in ablation.layers:
            attn = layers[layer - 1].self_attn
            fn = replacement(ablation.kind, layer, means)

            def forward(hidden_states, *args, _attn=attn, _fn=fn, **kwargs):
                # CLIPEncoderLayer unpacks (attn_output, attn_weights).
                return _fn(_attn, hidden_states), None

            attn.forward = forward  # instance attribute shadows the class method
            patched_modules.append(attn)
        yield model
    finally:
        for attn in patched_modules:
            del attn.forward
