"""Low precision at full speed, with float32's answer: the vision tower's sweep in bfloat16 or float16, every
selection that the rounding could have changed computed again in float32.

A selection is an argmax over the prompts' logits. Rounding moves each logit of an (image, ablation) pair
by some error e_p; the pick can change only when the low-precision margin (top logit minus the second) is
at most the spread of those errors, max_p e_p - min_p e_p (the top two swap only if their errors differ by
more than the margin between them). So ``VerifiedSweep`` measures that spread on pairs it computes both ways
and recomputes in float32 every pair whose low-precision margin is within

    bound = max(SAFETY x the largest spread seen so far,  eps(dtype) x the pair's largest |logit - bias|)

(the second term, one unit of the dtype's rounding at the pair's logit magnitude, is a floor for a run
whose measured errors are all tiny). Where the spread is measured: the first CALIBRATION_IMAGES images of
the run under every ablation (their "sample" pairs hold float32's values) and every pair recomputed for its
margin. Only pairs with a margin within the bound are recomputed; they and the sampled pairs store float32's
logits, probabilities and embeddings, the others their low-precision values (within the tolerance
docs/precision.md gives).

The unablated pass of every image is float32's (the fixed judge of score_baseline, so that score is exact):
the engine computes it on a float32 copy of the model as the trunk every ablation branches off, rounded to
the low precision at its first ablated layer (compute.engine), so it costs no pass of its own and only the
layers from the branch on round. The plain method computes it again in float32 (and measures its error).
The other float32 computations run the same code as a float32 run (compute.engine.SweepEngine, or the plain
method) on that copy, over just the images and ablations that need them: the flagged images under the
union of their flagged ablations. The selections then equal a float32 run's up to float32's own rounding (a
float32 run at another batch size differs by as much).
The choice of dtype ("auto") is compute.devices.resolve_dtype; SAFETY and CALIBRATION_IMAGES were chosen
from the measurements in docs/precision.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from compute.ablations import Ablation
from compute.engine import SweepEngine, Tap, means_on, plain_batch
from compute.models import LoadedClip
from compute.scoring import LogitScale, cosine_logits, stacked, text_tokens
from compute.store import VERIFIED

SAFETY = 6.0  # the bound is this many times the largest error spread seen (measured: a run's largest was up
# to 3.2x what its first two images showed; docs/precision.md)
CALIBRATION_IMAGES = 2  # the run's first images, computed both ways under every ablation
BASELINE, SAMPLE, MARGIN = (VERIFIED.index(name) for name in ("baseline", "sample", "margin"))


def near_tie(logits: torch.Tensor, bound: float, eps: float, bias: float | torch.Tensor = 0.0) -> torch.Tensor:
    """Low-precision logits (..., P) -> (...) bool: pairs whose margin (top logit minus the second) is within
    max(bound, eps x the pair's largest |logit - bias|), the rounding could have changed their pick. A margin
    that is NaN or infinite (float16 overflow) is flagged too."""
    top2 = logits.topk(2, dim=-1).values
    margin = top2[..., 0] - top2[..., 1]
    floor = eps * (logits - bias).abs().amax(dim=-1)
    return ~(margin > torch.clamp(floor, min=bound))


@dataclass
class VerifyStats:
    """What verification did in this process (compute.runner prints it after the sweep)."""

    pairs: int = 0  # (image, ablation) pairs scored
    baseline: int = 0  # of them, unablated pairs (float32 for the judge)
    sample: int = 0  # pairs of the calibration images
    margin: int = 0  # pairs recomputed because their margin was within the bound
    measured: int = 0  # pairs computed both ways: where the error spread was measured
    spread: float = 0.0  # the largest error spread seen (logits)
    logit_error: float = 0.0  # the largest |low-precision logit - float32 logit| seen
    cosine: float = 1.0  # the smallest cosine between a low-precision embedding and float32's (engine)
    bound: float = 0.0  # SAFETY x spread, as it stood at the end
    sweep_s: float = 0.0  # seconds of the verified sweep, both precisions
    float32_s: float = 0.0  # of them, the float32 recomputations (calibration images, margins; the plain method's
    # unablated passes): the engine's float32 trunk is part of its sweep

    def verified(self) -> int:
        return self.baseline + self.sample + self.margin

    def describe(self, dtype: str) -> str:
        share = self.verified() / self.pairs if self.pairs else 0.0
        return (f"{dtype} with float32 verification: {self.verified():,} of {self.pairs:,} pairs ({share:.1%}) hold "
                f"float32 values ({self.margin:,} for a margin within the bound, {self.sample:,} sampled, "
                f"{self.baseline:,} unablated); bound {self.bound:.4g} = {SAFETY:g} x the largest error spread "
                f"{self.spread:.4g} of {self.measured:,} pairs measured (largest logit error {self.logit_error:.4g}, "
                f"embeddings within cosine {self.cosine:.6f}); float32 recomputation took {self.float32_s:.3g} s of the sweep's "
                f"{self.sweep_s:.3g} s")


@dataclass
class Swept:
    """One batch through the vision tower under every ablation of the run."""

    embeddings: torch.Tensor  # (n, A, E) float32: before normalisation (towers.pool)
    logits: torch.Tensor | None  # (n, A, P) the model's own (the plain method); None: cosine logits of embeddings
    verified: torch.Tensor | None  # (n, A) int8 codes of store.VERIFIED; None: a float32 run (nothing to verify)


class VerifiedSweep:
    """The sweep of a run over one batch at a time: in float32, or in low precision with every selection
    the rounding could have changed computed again in float32 (see the module docstring)."""

    def __init__(self, exact: LoadedClip, fast: LoadedClip, ablations: list[Ablation],
                 means: dict[str, dict[int, np.ndarray]], keep: list[int], text_norm: torch.Tensor,
                 scale: LogitScale, method: str = "engine", texts: list[str] | None = None, verify: bool = True,
                 own_logits: bool = True) -> None:
        """exact: the float32 model; fast: the model the run computes in (``exact`` itself for float32); means:
        the run's statistics ({stat: {layer: (tokens, width) float32}}, from the float32 model); keep: the
        ablation ids the run still writes; text_norm (P, E) float32 and scale: the prompts, as score_batch
        takes them; texts: the prompts, one text each (the plain method reruns the text tower). ``verify``
        False: the low precision as it comes (tests show what verification changes). ``own_logits`` False: the
        plain method's logits come from its embeddings as the engine's do (an ensemble prompt has no one text
        whose logit the model computes)."""
        self.exact, self.fast, self.ablations, self.method = exact, fast, ablations, method
        self.own_logits = own_logits
        self.verifying = verify and fast.dtype != torch.float32
        self.text_norm, self.scale = text_norm, scale
        self.keep = list(keep)
        self.checked = [a for a in keep if a != 0]  # the baseline is always float32's when verifying
        self.means_fast = means_on(means, fast.device, fast.dtype)
        self.means_exact = means_on(means, exact.device, torch.float32) if self.verifying else self.means_fast
        self.tokens = text_tokens(exact, texts) if method == "plain" else None
        # Verified, the engine computes the unablated path on the float32 model and branches off it in low
        # precision: the baseline pairs are float32's without a pass of their own (compute.engine).
        self.float32_trunk = method == "engine" and (self.verifying or fast.dtype == torch.float32)
        trunk = exact.model if self.verifying else None  # (the engine: built below for it alone)
        self.engine = SweepEngine(fast.model, ablations, self.means_fast, trunk) if method == "engine" else None
        self.eps = torch.finfo(fast.dtype).eps
        self.sampled = 0  # calibration images seen
        self.stats = VerifyStats()

    # --- the computations

    def _run(self, clip: LoadedClip, pixels: torch.Tensor, ablations: list[Ablation],
             means: dict, tap: Tap | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """pixels (n, 3, h, w) float32 under ``ablations``, in clip's dtype -> (embeddings (n, a, E) float32, the
        model's logits (n, a, P) float32 for the plain method, else None). ``tap``: shown the engine's
        unablated pass (compute.engine.Tap)."""
        if self.method == "plain":
            emb, logits = plain_batch(clip.model, ablations, pixels.to(clip.dtype), self.tokens, means)
            return emb, logits if self.own_logits else None
        engine = self.engine if clip is self.fast else SweepEngine(clip.model, ablations, means)
        return stacked(engine.embeddings(pixels, tap), ablations), None

    def _logits(self, emb: torch.Tensor, logits: torch.Tensor | None) -> torch.Tensor:
        return logits if logits is not None else cosine_logits(emb, self.text_norm, self.scale)

    def __call__(self, pixels: torch.Tensor, tap: Tap | None = None) -> Swept:
        """pixels: (n, 3, h, w) float32 on the model's device -> Swept. ``tap`` (the engine of a float32 or a
        verified run only, whose unablated pass is float32's: ``float32_trunk``) is shown the unablated pass, for
        compute.decomposition."""
        if tap is not None and not self.float32_trunk:
            raise ValueError("a tap reads the engine's float32 unablated pass: none here")
        start = time.perf_counter()
        emb, logits = self._run(self.fast, pixels, self.ablations, self.means_fast, tap)
        if not self.verifying:
            return Swept(emb, logits, None)
        n, a = emb.shape[:2]
        low_logits = self._logits(emb, logits)  # (n, A, P): what the low precision would select
        emb = emb.clone()
        logits = None if logits is None else logits.clone()
        verified = torch.zeros((n, a), dtype=torch.int8, device=emb.device)

        # 1. The run's first images under every ablation it writes, both ways: the error is measured there.
        k = min(n, max(0, CALIBRATION_IMAGES - self.sampled))
        if k:
            cols = self.checked if self.float32_trunk else [0, *self.checked]
            self._replace(pixels[:k], list(range(k)), cols, emb, logits, low_logits, verified, SAMPLE)
            self.sampled += k
        # 2. The unablated pass in float32: the judge of score_baseline. The engine's trunk computed it; the
        # plain method computes it again here (more measurements of the error).
        if k < n and not self.float32_trunk:
            self._replace(pixels[k:], list(range(k, n)), [0], emb, logits, low_logits, verified, BASELINE)
        verified[:, 0] = BASELINE
        # 3. Pairs whose margin is within the bound of the rounding error: computed again in float32. The bound
        # is learnt from every pair measured so far, this batch's calibration images included.
        bound = SAFETY * self.stats.spread
        if k < n and self.checked and low_logits.shape[-1] > 1:
            cols = torch.tensor(self.checked, device=emb.device)
            flagged = near_tie(low_logits[k:, cols], bound, self.eps, self.scale.bias)  # (m, C)
            if bool(flagged.any()):
                rows = (k + flagged.any(dim=1).nonzero().flatten()).tolist()
                which = flagged.any(dim=0).nonzero().flatten().tolist()
                pairs = flagged[[r - k for r in rows]][:, which]  # (rows, which)
                self._replace(pixels[rows], rows, [self.checked[c] for c in which], emb, logits, low_logits,
                              verified, MARGIN, pairs)
        self._count(verified)  # (its .tolist() waits for the device: the time below is the work's)
        self.stats.bound = SAFETY * self.stats.spread
        self.stats.sweep_s += time.perf_counter() - start
        return Swept(emb, logits, verified)

    def _replace(self, pixels: torch.Tensor, rows: list[int], cols: list[int], emb: torch.Tensor,
                 logits: torch.Tensor | None, low_logits: torch.Tensor, verified: torch.Tensor, reason: int,
                 only: torch.Tensor | None = None) -> None:
        """Compute images ``rows`` (their ``pixels``) under ablations ``cols`` in float32, learn the error from
        every pair so computed, and put float32's values in place of the pairs ``only`` marks (rows, cols)
        bool (default: all of them), marked ``reason``."""
        start = time.perf_counter()
        exact_emb, exact_logits = self._run(self.exact, pixels, [self.ablations[c] for c in cols], self.means_exact)
        exact_l = self._logits(exact_emb, exact_logits)  # (rows, cols, P)
        r = torch.tensor(rows, device=emb.device)[:, None]
        c = torch.tensor(cols, device=emb.device)[None, :]
        self._learn(low_logits[r, c], exact_l, emb[r, c], exact_emb)
        mask = torch.ones(len(rows), len(cols), dtype=torch.bool, device=emb.device) if only is None else only
        ri, ci = mask.nonzero(as_tuple=True)
        emb[r[ri, 0], c[0, ci]] = exact_emb[ri, ci]
        if logits is not None:
            logits[r[ri, 0], c[0, ci]] = exact_logits[ri, ci]
        verified[r[ri, 0], c[0, ci]] = reason
        self.stats.float32_s += time.perf_counter() - start  # _learn's float() waited for the device

    def _learn(self, low: torch.Tensor, exact: torch.Tensor, low_emb: torch.Tensor, exact_emb: torch.Tensor) -> None:
        """Pairs computed both ways: logits (..., P) and embeddings (..., E) -> the stats' largest error spread,
        logit error and the smallest embedding cosine (non-finite low-precision values are skipped: such pairs
        are always recomputed)."""
        err = (low - exact).float()  # (..., P)
        ok = torch.isfinite(err).all(dim=-1)
        if not bool(ok.any()):
            return
        err = err[ok]
        stats = self.stats
        stats.measured += int(ok.sum())
        stats.spread = max(stats.spread, float((err.amax(dim=-1) - err.amin(dim=-1)).max()))
        stats.logit_error = max(stats.logit_error, float(err.abs().max()))
        cos = torch.nn.functional.cosine_similarity(low_emb[ok].float(), exact_emb[ok].float(), dim=-1)
        stats.cosine = min(stats.cosine, float(cos.min()))

    def _count(self, verified: torch.Tensor) -> None:
        codes = verified[:, self.keep].flatten().tolist()  # the pairs the run writes
        stats = self.stats
        stats.pairs += len(codes)
        stats.baseline += codes.count(BASELINE)
        stats.sample += codes.count(SAMPLE)
        stats.margin += codes.count(MARGIN)
