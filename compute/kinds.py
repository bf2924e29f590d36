"""What an ablation kind does, in one place: the registry ``KINDS``. Each ``Kind`` entry holds everything
about how a kind computes; the rest of the compute stage reads the entry and names no kind (only the
views made for one kind by design, the flow sweep and the Flow page over knockout's targets, name theirs).

A kind says, in small plain functions:
- ``heads``: the chosen heads' outputs before ``out_proj`` from their values, ``fn(v, rows) -> o`` with v
  (batch, chosen heads, tokens, head_dim) and o (batch, chosen heads, rows, head_dim); or instead
  ``blocked``: the query -> key edges it removes before the softmax, ``fn(target, rows, tokens, device, cls)
  -> (rows, tokens) bool`` (knockout). ``head_attention`` runs either on the named heads of a layer;
- ``layer``: the whole attention block when no heads are named, ``fn(attn, x, rows) -> out`` (None: the
  head form on every head; it may differ from that: ``zero:L`` returns zeros, ``zero:L/h0-11`` out_proj's
  bias). ``attn`` is the layer's attention module (``CLIPAttention`` or ``SiglipAttention``, with the same
  q/k/v/out_proj), ``x`` the layer-normed input (batch, tokens, width), ``rows`` how many query positions
  to return (the first ones; None = every token), ``out`` what the block hands to the residual add,
  (batch, rows, width);
- ``probabilities``: the attention probabilities it implies, for the maps (compute.attention_maps);
- ``cls_local``: for a target, whether a whole layer of it lets the CLS token read its own input alone (the
  engine then computes the CLS token only); ``targets`` (and ``cls_targets``, those needing a CLS token);
  ``needs_mean``: it takes a dataset statistic of the unablated model.

A new kind is those few functions and one entry in ``KINDS``; the parser (compute.ablations),
``replacement`` (what the plain method patches in and the engine runs), the maps, the decomposition's
direct effects and the attribution's estimates (``kind_heads``, compute.attribution) read the entry, and the
tests run over every entry. ``LayerMode`` is what one layer runs: a
kind on some heads with its target, or ``NORMAL``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

# torch is imported inside the functions that call it (a new kind's functions do the same), not here:
# compute.config checks an experiment's ablations against this registry and the dashboard's Flow page lists
# its targets, and neither should wait a second for torch (tests/unit/test_layout.py holds it).
if TYPE_CHECKING:
    import torch
    from torch import nn

MEAN_STAT = "attention_mean"  # per layer: the attention block's output, (tokens, width)
HEAD_MEAN_STAT = "attention_head_mean"  # per layer: the heads' outputs before out_proj, concatenated, (tokens, width)

Means = dict[str, dict[int, "torch.Tensor"]]  # stat name -> {layer: (tokens, width)}

# --------------------------------------------------------------------------------------------------
# Layer-wide replacements. x: (batch, tokens, width) layer-normed input; -> (batch, rows, width).


def identity_attention(attn: nn.Module, x: torch.Tensor, rows: int | None = None) -> torch.Tensor:
    # Attention probabilities = identity: each token keeps its own value vector, so queries, keys and the
    # softmax are never needed.
    return attn.out_proj(attn.v_proj(x[:, :rows]))


def zero_attention(attn: nn.Module, x: torch.Tensor, rows: int | None = None) -> torch.Tensor:
    import torch

    return torch.zeros_like(x[:, :rows])  # only the residual path carries on


def uniform_attention(attn: nn.Module, x: torch.Tensor, rows: int | None = None) -> torch.Tensor:
    # Every token attends equally to all tokens: the mean of the values, then out_proj.
    v = attn.v_proj(x).mean(dim=1, keepdim=True)  # (batch, 1, width)
    return attn.out_proj(v).expand(-1, rows or x.shape[1], -1)


def mean_attention(attn: nn.Module, x: torch.Tensor, rows: int | None = None, *, mean: torch.Tensor) -> torch.Tensor:
    # mean: (tokens, width), this layer's attention output per position averaged over the run's dataset on
    # an unablated pass; sliced to the positions asked for (position 0, CLS, first).
    r = rows or x.shape[1]
    return mean[:r].to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)


# --------------------------------------------------------------------------------------------------
# Per-head replacements: the chosen heads' outputs before out_proj.
# v: (batch, chosen heads, tokens, head_dim) their values; -> (batch, chosen heads, rows, head_dim).


def identity_heads(v: torch.Tensor, rows: int) -> torch.Tensor:
    # The head's probabilities are the identity: its output is its own value slice.
    return v[:, :, :rows]


def zero_heads(v: torch.Tensor, rows: int) -> torch.Tensor:
    import torch

    return torch.zeros_like(v[:, :, :rows])


def uniform_heads(v: torch.Tensor, rows: int) -> torch.Tensor:
    return v.mean(dim=2, keepdim=True).expand(-1, -1, rows, -1)


def mean_heads(v: torch.Tensor, rows: int, *, mean: torch.Tensor) -> torch.Tensor:
    # mean: (chosen heads, tokens, head_dim), each head's output per position over the run's dataset.
    return mean[:, :rows].to(v.dtype).unsqueeze(0).expand(v.shape[0], -1, -1, -1)


# --------------------------------------------------------------------------------------------------
# The probabilities a kind implies, for the maps. scores: (batch, chosen heads, rows, tokens) float32, the
# heads' unablated scaled dot products (softmax(scores) = their normal probabilities); target: the
# ablation's target ("" for none); cls: token 0 is a CLS token. -> (batch, chosen heads, rows, tokens).


def identity_probabilities(scores: torch.Tensor, target: str = "", cls: bool = True) -> torch.Tensor:
    import torch

    rows, tokens = scores.shape[-2:]
    return torch.eye(rows, tokens, device=scores.device).expand_as(scores)  # each query reads itself only


def zero_probabilities(scores: torch.Tensor, target: str = "", cls: bool = True) -> torch.Tensor:
    import torch

    return torch.zeros_like(scores)  # a zeroed head reads nothing


def uniform_probabilities(scores: torch.Tensor, target: str = "", cls: bool = True) -> torch.Tensor:
    import torch

    return torch.full_like(scores, 1.0 / scores.shape[-1])


def no_probabilities(scores: torch.Tensor, target: str = "", cls: bool = True) -> torch.Tensor:
    import torch

    return torch.full_like(scores, float("nan"))  # a dataset mean replaces the output: no probabilities


# --------------------------------------------------------------------------------------------------
# Attention knockout: query -> key edges removed before the softmax. On a tower with a CLS token (CLIP)
# token 0 is CLS and the rest patches; on one without (SigLIP) every token is a patch, and only
# patches>patches exists.

TARGETS = ("patches>cls", "cls>patches", "patches>patches")  # keys > queries: the blocked flow
CLS_TARGETS = ("patches>cls", "cls>patches")  # need a CLS token


def knockout_edges(target: str, rows: int, tokens: int, device: torch.device | None = None,
                   cls: bool = True) -> torch.Tensor:
    """(rows, tokens) bool, True where query ``row`` may not read key ``column``. The diagonal is never
    blocked, so every row keeps at least one key and the softmax stays defined. ``cls``: token 0 is a CLS
    token; without one, patches>patches leaves every token reading itself alone."""
    import torch

    q = torch.arange(rows, device=device).unsqueeze(1)  # (rows, 1)
    k = torch.arange(tokens, device=device).unsqueeze(0)  # (1, tokens)
    if not cls:
        if target != "patches>patches":
            raise ValueError(f"knockout target {target!r} needs a CLS token")
        return q != k
    if target == "patches>cls":  # the CLS query cannot read patch tokens
        return (q == 0) & (k > 0)
    if target == "cls>patches":  # patch queries cannot read the CLS token
        return (q > 0) & (k == 0)
    if target == "patches>patches":  # a patch query reads only itself and CLS
        return (q > 0) & (k > 0) & (q != k)
    raise ValueError(f"unknown knockout target {target!r}")


def knockout_probabilities(scores: torch.Tensor, target: str, cls: bool = True) -> torch.Tensor:
    # Blocked edges are 0, the rest renormalised: the softmax over the edges left.
    blocked = knockout_edges(target, *scores.shape[-2:], scores.device, cls)  # (rows, tokens)
    return scores.masked_fill(blocked, float("-inf")).softmax(dim=-1)


def knockout_cls_local(target: str) -> bool:
    # Only patches>cls leaves the CLS query reading its own key alone; the others keep its row whole.
    return target == "patches>cls"


# --------------------------------------------------------------------------------------------------
# The registry.

LayerFn = Callable[..., "torch.Tensor"]  # (attn, x, rows[, mean=]) -> (batch, rows, width)
HeadFn = Callable[..., "torch.Tensor"]  # (v, rows[, mean=]) -> (batch, chosen heads, rows, head_dim)
EdgeFn = Callable[..., "torch.Tensor"]  # (target, rows, tokens, device, cls) -> (rows, tokens) bool, True: blocked
ProbabilityFn = Callable[["torch.Tensor", str, bool], "torch.Tensor"]  # (scores, target, cls) -> probabilities


def everywhere(target: str) -> bool:
    # A tokenwise kind: whatever the target, a token's output reads that token's input alone.
    return True


def nowhere(target: str) -> bool:
    return False


@dataclass(frozen=True, kw_only=True)
class Kind:
    """Everything about one ablation kind (see the module docstring). At head grain exactly one of ``heads``
    and ``blocked`` says what the named heads do; the heads not named run as in a normal layer, and out_proj
    (with its bias) reads the concatenation of all heads."""

    probabilities: ProbabilityFn  # the attention probabilities it implies, for the maps (NaN: none)
    heads: HeadFn | None = None  # the named heads' outputs before out_proj, from their values
    blocked: EdgeFn | None = None  # or the query -> key edges removed before their softmax
    layer: LayerFn | None = None  # the whole block when no heads are named (None: ``heads``/``blocked`` on all)
    # For a target ("" when it takes none), whether a whole layer of it lets the CLS token's output read the
    # CLS token's input alone, so the engine may compute that layer on the CLS token only (exact).
    cls_local: Callable[[str], bool] = nowhere
    targets: tuple[str, ...] = ()  # the targets it takes; when any, one is required
    cls_targets: tuple[str, ...] = ()  # those of its targets that need a CLS token
    needs_mean: bool = False  # takes mean=..., a dataset statistic of the unablated model

    def __post_init__(self) -> None:
        if (self.heads is None) == (self.blocked is None):
            raise ValueError("a kind gives its heads' outputs (heads=) or the edges it blocks (blocked=), one of them")
        if not set(self.cls_targets) <= set(self.targets):
            raise ValueError(f"cls_targets {self.cls_targets} are not among the kind's targets {self.targets}")

    def takes(self, cls: bool = True) -> tuple[str, ...]:
        """The targets it takes on a tower with a CLS token, or (``cls`` False) without one."""
        return tuple(t for t in self.targets if cls or t not in self.cls_targets)


KINDS: dict[str, Kind] = {
    "identity": Kind(layer=identity_attention, heads=identity_heads, probabilities=identity_probabilities,
                     cls_local=everywhere),
    "zero": Kind(layer=zero_attention, heads=zero_heads, probabilities=zero_probabilities, cls_local=everywhere),
    "mean": Kind(layer=mean_attention, heads=mean_heads, probabilities=no_probabilities, cls_local=everywhere,
                 needs_mean=True),
    "uniform": Kind(layer=uniform_attention, heads=uniform_heads, probabilities=uniform_probabilities),
    "knockout": Kind(blocked=knockout_edges, probabilities=knockout_probabilities, cls_local=knockout_cls_local,
                     targets=TARGETS, cls_targets=CLS_TARGETS),
}


def kind_targets(cls: bool = True) -> list[tuple[str, str]]:
    """Every (kind, target) a tower with (or, ``cls`` False, without) a CLS token can run; target "" for a
    kind that takes none. Registry order."""
    return [(name, target) for name, kind in KINDS.items() for target in (kind.takes(cls) if kind.targets else ("",))]


def kind_heads(attn: nn.Module, q: torch.Tensor | None, k: torch.Tensor | None, v: torch.Tensor, rows: int, *,
               kind: str, pick: list[int] | slice, target: str = "", head_mean: torch.Tensor | None = None,
               cls: bool = True) -> torch.Tensor:
    """The outputs before out_proj of the heads ``pick`` (a list of head indices, or every head) under ``kind``,
    from the layer's queries, keys and values: the one computation of a changed head, which ``head_attention``
    (the engine, the plain method) and compute.attribution both run.

    q: (batch, heads, rows, head_dim) (None for a kind that needs none: it gives its outputs from the values),
    k, v: (batch, heads, tokens, head_dim) -> (batch, chosen heads, rows, head_dim). head_mean: (tokens, width),
    the heads' outputs before out_proj averaged over the dataset (kinds that need a mean)."""
    import torch.nn.functional as F

    spec = KINDS[kind]
    t = v.shape[2]
    if spec.blocked is not None:
        allowed = ~spec.blocked(target, rows, t, v.device, cls)  # (rows, tokens); SDPA's boolean mask: True takes part
        return F.scaled_dot_product_attention(q[:, pick], k[:, pick], v[:, pick], attn_mask=allowed, scale=attn.scale)
    fn = spec.heads
    if spec.needs_mean:
        per_head = head_mean.view(-1, attn.num_heads, attn.head_dim).transpose(0, 1)  # (heads, tokens, head_dim)
        fn = partial(fn, mean=per_head[pick])
    return fn(v[:, pick], rows)


def head_attention(attn: nn.Module, x: torch.Tensor, rows: int | None = None, *, kind: str,
                   heads: tuple[int, ...], target: str = "", head_mean: torch.Tensor | None = None,
                   cls: bool = True) -> torch.Tensor:
    """The attention block with ``heads`` (all when empty) changed by ``kind``; the other heads run exactly as
    in a normal layer, and out_proj (with its bias) is applied to the concatenation of all heads.

    x: (batch, tokens, width) -> (batch, rows, width). head_mean: (tokens, width), the heads' outputs before
    out_proj averaged over the dataset (kinds that need a mean). cls: token 0 is a CLS token (what targets mean).
    """
    import torch.nn.functional as F

    spec = KINDS[kind]
    b, t, d = x.shape
    r = rows or t
    n_heads, hd = attn.num_heads, attn.head_dim
    chosen = list(heads) if heads else list(range(n_heads))
    every = len(chosen) == n_heads
    pick = slice(None) if every else chosen
    v = attn.v_proj(x).view(b, t, n_heads, hd).transpose(1, 2)  # (batch, heads, tokens, head_dim)
    q = k = None
    if spec.blocked is not None or not every:  # some head still computes its probabilities
        q = attn.q_proj(x[:, :r]).view(b, r, n_heads, hd).transpose(1, 2)  # (batch, heads, rows, head_dim)
        k = attn.k_proj(x).view(b, t, n_heads, hd).transpose(1, 2)  # (batch, heads, tokens, head_dim)
    changed = kind_heads(attn, q, k, v, r, kind=kind, pick=pick, target=target, head_mean=head_mean,
                         cls=cls)  # (batch, chosen heads, rows, head_dim)
    if every:
        o = changed
    else:
        # The heads left alone run as a normal layer runs them: unmasked SDPA over every head, the chosen ones
        # overwritten after. A mask over every head takes another kernel (seen in bfloat16: logits 1.8e-2 off
        # the unmasked computation); this way those heads equal the normal layer's bit for bit.
        o = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)  # (batch, heads, rows, head_dim)
        o[:, chosen] = changed
    return attn.out_proj(o.transpose(1, 2).reshape(b, r, d))


# --------------------------------------------------------------------------------------------------
# What one layer runs, and the function that runs it.


@dataclass(frozen=True, order=True)
class LayerMode:
    """What one layer runs: "normal", or a kind on some heads (() = the whole layer) with its target."""

    kind: str
    heads: tuple[int, ...] = ()
    target: str = ""

    @property
    def cls_local(self) -> bool:
        """The CLS token's output reads the CLS token's input alone, so a layer whose other outputs are
        not needed may be computed on the CLS token only (exact)."""
        if self.heads or self.kind == "normal":  # a head-level layer's other heads read every token
            return False
        return KINDS[self.kind].cls_local(self.target)


NORMAL = LayerMode("normal")


def replacement(mode: LayerMode, layer: int, means: Means | None, cls: bool = True) -> Callable[..., torch.Tensor]:
    """The function (attn, x, rows) -> out that ``mode`` puts in place of ``layer``'s attention block.
    ``cls``: token 0 is a CLS token (what knockout targets mean)."""
    spec = KINDS[mode.kind]
    stat = HEAD_MEAN_STAT if mode.heads else MEAN_STAT
    mean = None
    if spec.needs_mean:
        mean = (means or {}).get(stat, {}).get(layer)
        if mean is None:
            raise ValueError(f"{mode.kind}:{layer} needs the dataset statistic {stat} of layer {layer}")
    if mode.heads or spec.layer is None:
        return partial(head_attention, kind=mode.kind, heads=mode.heads, target=mode.target, head_mean=mean,
                       cls=cls)
    return partial(spec.layer, mean=mean) if spec.needs_mean else spec.layer
