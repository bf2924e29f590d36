"""The maths every stage shares: text and image embeddings, the model's logits, and the selection.

The run, the caption stage, rescore and the Prompt lab all score through these functions, so a number
means the same wherever it was made. The selection (argmax prompt, its correctness, its probability, the
margin to the runner-up, its judge score) is decided here once, vectorised on the model's device; the
store only writes what it is given.

Before a run or a rescore writes anything, ``check_prompts`` holds the prompts against the model's tokenizer
(longer than the text tower's positions: refused unless ``[model] truncate_prompts``; two prompts the
tokenizer makes the same: refused, they would always tie) and its text embeddings against NaN and
infinity, and ``check_image_embedding`` the unablated image tower on a probe image. Per batch,
``check_finite`` refuses results that are not finite (an ablation that overflows), before they are written.

``logit`` is the model's own logit for an (image, prompt) pair: CLIP's ``logit_scale.exp() * cosine``, and
SigLIP's ``logit_scale.exp() * cosine + logit_bias`` (its sigmoid is the pair's own probability; ``prob``
here stays the softmax over the run's prompts, which the bias does not change).

Long because one per-batch scorer (``score_batch``) serves the single-process sweep, the Ray actors and rescore:
splitting its checks and its row types off would put the numbers a batch stores in two places.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from compute import store
from compute.ablations import Ablation
from compute.attribution import prompt_pairs
from compute.dataset import open_image
from compute.errors import InputError, ModelOutputError
from compute.models import LoadedClip, pixel_values
from compute.pixels import probe_image
from compute.store import Selection
from compute.towers import LogitScale, image_inputs  # noqa: F401 (LogitScale: scoring's API too)

# --------------------------------------------------------------------------------------------------
# Embeddings.


def text_positions(clip: LoadedClip) -> int:
    """The most tokens the text tower reads (its position embeddings), end-of-text token included."""
    return int(clip.model.config.text_config.max_position_embeddings)


def text_tokens(clip: LoadedClip, texts: list[str]) -> dict[str, torch.Tensor]:
    """The tokenised prompts as the family's text tower expects them, on clip.device.

    CLIP pools at the end-of-text token: pad to the longest prompt and pass the attention mask. SigLIP pools
    at the LAST position, whatever token is there, and was trained on inputs padded to the full length: pad
    to text_config.max_position_embeddings, so a prompt's embedding does not depend on the prompts beside
    it, and pass exactly what the tokenizer returns (SigLIP 1: input_ids only). A prompt longer than the
    positions is cut to them; check_prompts refuses such prompts unless the experiment opts in.
    """
    tokenizer = clip.processor.tokenizer
    length = text_positions(clip)
    if clip.family == "clip":
        tok = tokenizer(texts, padding=True, max_length=length, truncation=True, return_tensors="pt")
    else:
        tok = tokenizer(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    return {k: v.to(clip.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}


TRUNCATE_HINT = "[model] truncate_prompts = true"  # the experiment file's opt-in (rescore: --truncate-prompts)


def _quoted(text: str, width: int = 60) -> str:
    """A prompt as an error line names it: quoted, escaped, shortened."""
    return repr(text[:width] + ("..." if len(text) > width else ""))


def check_prompts(clip: LoadedClip, texts: list[str], truncate: bool = False,
                  opt_in: str = TRUNCATE_HINT) -> torch.Tensor:
    """The prompts as the model reads them, checked before anything is written; -> their text embeddings
    (P, E), normalised, float32 on clip.device.

    Refused (InputError, naming the prompts): a prompt longer than the text tower's positions (it would be
    cut silently and, differing only past the cut, tie with another), unless ``truncate`` (the documented
    opt-in ``opt_in``); two prompts that are the same token ids to the model's tokenizer (CLIP's lower-cases:
    "A photo" and "a photo"; "café" composed and decomposed), which would always tie, the first one winning;
    a prompt whose text embedding is NaN or infinite (broken weights would otherwise score as accuracy).
    """
    tokenizer = clip.processor.tokenizer
    limit = text_positions(clip)
    ids = tokenizer(texts, truncation=False, verbose=False)["input_ids"]  # lists, special tokens included
    cut = [len(row) > limit for row in ids]
    if any(cut):
        k = cut.index(True)
        if not truncate:
            raise InputError(f"prompt {_quoted(texts[k])} is {len(ids[k])} tokens long: the text tower of "
                             f"{clip.name} reads at most {limit}; shorten it, or set {opt_in} to cut "
                             f"longer prompts at {limit} tokens")
        ids = tokenizer(texts, truncation=True, max_length=limit, verbose=False)["input_ids"]
    first: dict[tuple[int, ...], int] = {}
    for k, row in enumerate(ids):
        j = first.setdefault(tuple(row), k)
        if j != k:
            how = f" once cut at {limit} tokens" if cut[j] or cut[k] else ""
            raise InputError(f"prompts {_quoted(texts[j])} and {_quoted(texts[k])} are the same to the tokenizer "
                             f"of {clip.name}{how} (the same {len(row)} token ids): they would always tie; keep one")
    emb = text_embeddings(clip, texts)  # (P, E)
    bad = ~torch.isfinite(emb).all(dim=-1)
    if bool(bad.any()):
        k = int(bad.nonzero()[0, 0])
        raise InputError(f"model {clip.name} gives a non-finite text embedding ({_non_finite(emb[k])}) for prompt "
                         f"{_quoted(texts[k])}: its weights are broken (NaN or infinite); nothing was written")
    return emb


def _non_finite(x: torch.Tensor | np.ndarray) -> str:
    """Which non-finite values ``x`` holds: "NaN", "infinity" or "NaN and infinity"."""
    x = torch.as_tensor(x)
    kinds = [name for name, hit in (("NaN", bool(torch.isnan(x).any())), ("infinity", bool(torch.isinf(x).any())))
             if hit]
    return " and ".join(kinds)


@torch.inference_mode()
def check_image_embedding(clip: LoadedClip) -> None:
    """The unablated image tower on one probe image (compute.pixels), before anything is written: a model
    whose image embedding is NaN or infinite is refused (InputError) instead of scoring as an accuracy."""
    pixels = pixel_values(clip, [probe_image()]).to(clip.device, clip.dtype)  # (1, 3, size, size)
    emb = clip.model.get_image_features(**image_inputs(clip.model, pixels)).pooler_output.float()
    if not bool(torch.isfinite(emb).all()):
        raise InputError(f"model {clip.name} gives a non-finite image embedding ({_non_finite(emb)}) on a probe "
                         f"image, unablated: its weights are broken (NaN or infinite); nothing was written")


def check_finite(result: store.BatchResult, ablations: list[Ablation], model: str) -> None:
    """A batch's results before they are written: logits that are NaN or infinite (an image embedding an
    ablation made non-finite: an overflow in float16, broken statistics) stop the run with ModelOutputError,
    naming the model, the first such ablation and its images; the batch is not written (what was committed
    before stays). ``ablations``: the run's, indexed by result.ablation_ids."""
    if result.selection is None:  # no image of the batch decoded: errors only
        return
    logits = result.selection.logits  # (n, A kept, P)
    bad = ~np.isfinite(logits).all(axis=2)  # (n, A kept)
    if result.embeddings is not None:
        bad |= ~np.isfinite(np.asarray(result.embeddings, np.float32)).all(axis=2)
    if not bad.any():
        return
    column = int(np.flatnonzero(bad.any(axis=0))[0])
    images = result.image_ids[bad[:, column]]
    shown = ", ".join(str(int(i)) for i in images[:5]) + (f" and {len(images) - 5} more" if len(images) > 5 else "")
    emb = None if result.embeddings is None else np.asarray(result.embeddings[:, column], np.float32)
    what = (_non_finite(emb) if emb is not None else "") or _non_finite(logits[:, column])
    raise ModelOutputError(f"model {model} gives non-finite image embeddings ({what}) under ablation "
                           f"{ablations[int(result.ablation_ids[column])].label!r} for image(s) {shown}: this batch "
                           f"was not written; the run stays incomplete (run in float32, or leave out that ablation)")


@torch.inference_mode()
def text_embeddings(clip: LoadedClip, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    """Projected, L2-normalised text embeddings. -> (texts, E) float32 on clip.device."""
    out = []
    for i in range(0, len(texts), batch_size):
        emb = clip.model.get_text_features(**text_tokens(clip, texts[i : i + batch_size])).pooler_output.float()
        out.append(emb / emb.norm(dim=-1, keepdim=True))
    return torch.cat(out)


def prompt_embeddings(clip: LoadedClip, prompts: list[list[str]] | list[str]) -> torch.Tensor:
    """Each prompt's normalised text embedding. -> (prompts, E) float32 on clip.device.

    ``prompts``: per prompt its text, or the texts of an ensemble (compute.prompts.Prompt.texts). An ensemble's
    embedding is the normalised mean of its texts' normalised embeddings (CLIP's prompt ensembles); a prompt of
    one text is that text's embedding as ``text_embeddings`` gives it, not renormalised, so runs without
    ensembles keep their numbers bit for bit. Each distinct text is embedded once.
    """
    groups = [[p] if isinstance(p, str) else list(p) for p in prompts]
    unique = list(dict.fromkeys(t for g in groups for t in g))
    emb = text_embeddings(clip, unique)  # (texts, E), normalised
    index = {t: i for i, t in enumerate(unique)}
    rows = [emb[index[g[0]]] if len(g) == 1 else normalise(emb[[index[t] for t in g]].mean(dim=0)) for g in groups]
    return torch.stack(rows) if rows else emb[:0]


@torch.inference_mode()
def image_embeddings_unablated(clip: LoadedClip, paths: list[Path], batch_size: int = 16) -> np.ndarray:
    """Image embeddings (before normalisation) of the unablated model. -> (images, E) float32."""
    out = []
    for i in range(0, len(paths), batch_size):
        images = [open_image(p) for p in paths[i : i + batch_size]]
        pixels = pixel_values(clip, images).to(clip.device, clip.dtype)
        emb = clip.model.get_image_features(**image_inputs(clip.model, pixels)).pooler_output
        out.append(emb.float().cpu().numpy())
    return np.concatenate(out)


def normalise(emb: torch.Tensor) -> torch.Tensor:
    """(..., E) -> the same, each vector of unit length, in float32."""
    emb = emb.float()
    return emb / emb.norm(dim=-1, keepdim=True)


# --------------------------------------------------------------------------------------------------
# Logits and the selection.


def logit_scale(clip: LoadedClip) -> LogitScale:
    """The model's scale and bias, as read in float32 when it was loaded (compute.models.load_clip)."""
    return LogitScale(clip.logit_scale, clip.logit_bias)


def cosine_logits(image_emb: torch.Tensor, text_norm: torch.Tensor, scale: LogitScale | float) -> torch.Tensor:
    """The model's logits_per_image. image_emb: (..., E) unnormalised; text_norm: (P, E) -> (..., P).
    ``scale``: a LogitScale, or a bare CLIP scale (no bias)."""
    if not isinstance(scale, LogitScale):
        scale = LogitScale(float(scale))
    logits = scale.scale * normalise(image_emb) @ text_norm.T
    return logits + scale.bias if scale.bias else logits


def sweep_pairs(embeddings: torch.Tensor, logits: torch.Tensor | None, text_norm: torch.Tensor,
                scale: LogitScale) -> torch.Tensor:
    """The prompt pairs of a swept batch, from its baseline (ablation 0) as score_batch scores
    it: embeddings (n, A, E), logits (n, A, P) or None (the cosine logits of the embeddings) -> (n, 2)."""
    base = logits[:, 0] if logits is not None else cosine_logits(embeddings[:, 0], text_norm, scale)  # (n, P)
    return prompt_pairs(base)


def truth_matrix(image_labels: list[tuple[str, ...]], prompt_labels: list[str]) -> torch.Tensor:
    """(images, prompts) bool: prompt p is correct for image i when its label is among the image's labels."""
    return torch.tensor([[label in labels for label in prompt_labels] for labels in image_labels],
                        dtype=torch.bool).reshape(len(image_labels), len(prompt_labels))


def select_tensors(logits: torch.Tensor, truth: torch.Tensor, baseline_emb: torch.Tensor,
                   text_norm: torch.Tensor, verified: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The selection of every (image, ablation), computed once, on the logits' device: the fields of
    store.Selection, as tensors.

    logits: (n, A, P); truth: (n, P) bool (see truth_matrix); baseline_emb: (n, E) unablated image
    embeddings, the fixed judge of score_baseline (as CLIP-Score is); text_norm: (P, E) normalised;
    verified: (n, A) int8 codes of store.VERIFIED (compute.precision), None for none.
    """
    logits = logits.float()
    n, a, p = logits.shape
    probs = logits.softmax(dim=-1)
    selected = logits.argmax(dim=-1)  # (n, A)
    if logits.is_cuda:  # pinned and without blocking: a plain copy would wait for the GPU to finish its queue
        truth = truth.pin_memory().to(logits.device, non_blocking=True)
    correct = truth.to(logits.device).gather(1, selected)  # (n, A)
    confidence = probs.gather(2, selected.unsqueeze(-1)).squeeze(-1)
    if p > 1:
        top2 = logits.topk(2, dim=-1).values  # (n, A, 2)
        margin = top2[..., 0] - top2[..., 1]
    else:
        margin = torch.full((n, a), float("nan"), device=logits.device)
    judge = normalise(baseline_emb) @ text_norm.T  # (n, P)
    score_baseline = judge.gather(1, selected)  # (n, A)
    out = {"logits": logits, "probs": probs, "prompt_id": selected.to(torch.int16), "correct": correct,
           "confidence": confidence, "margin": margin, "score_baseline": score_baseline}
    if verified is not None:
        out["verified"] = verified.to(torch.int8)
    return out


def select(logits: torch.Tensor, truth: torch.Tensor, baseline_emb: torch.Tensor,
           text_norm: torch.Tensor) -> Selection:
    """select_tensors, brought to the host as a store.Selection."""
    return Selection(**{k: t.cpu().numpy() for k, t in select_tensors(logits, truth, baseline_emb, text_norm).items()})


class ToHost:
    """Tensors on their way to the host. On a GPU the copies are queued without blocking (into pinned
    memory) so the device goes on with the next batch; ``arrays()`` waits for these copies only."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        cuda = any(t.is_cuda for t in tensors.values())
        self.tensors = {k: t.to("cpu", non_blocking=cuda) for k, t in tensors.items()}
        self.event = None
        if cuda:
            self.event = torch.cuda.Event()
            self.event.record()

    def arrays(self) -> dict[str, np.ndarray]:
        if self.event is not None:
            self.event.synchronize()
        return {k: t.numpy() for k, t in self.tensors.items()}


TORCH_EMBEDDING_DTYPES = {"float32": torch.float32, "float16": torch.float16}


class PendingBatch:
    """One batch's results, computed on the device and on their way to the host; ``result()`` gives the
    store.BatchResult."""

    def __init__(self, image_ids: list[int], ablation_ids: list[int], logits: torch.Tensor, truth: torch.Tensor,
                 baseline_emb: torch.Tensor, text_norm: torch.Tensor, embeddings: torch.Tensor | None = None,
                 embedding_dtype: str = "none", errors: list[tuple[int, str, str]] | None = None,
                 attempted: list[int] | None = None, verified: torch.Tensor | None = None,
                 decomposition: Decomposed | None = None, attribution: Attributed | None = None) -> None:
        tensors = select_tensors(logits, truth, baseline_emb, text_norm, verified)
        if embeddings is not None and embedding_dtype != "none":
            # Converted on the device: half the bytes to copy for float16, the same rounding as on the host.
            tensors["embeddings"] = embeddings.float().to(TORCH_EMBEDDING_DTYPES[embedding_dtype])
        if decomposition is not None:
            tensors.update({DECOMPOSED + k: t for k, t in decomposition.tensors.items()})
        if attribution is not None:
            tensors.update({ATTRIBUTED + k: t for k, t in attribution.tensors.items()})
        self.copy = ToHost(tensors)
        self.image_ids, self.ablation_ids = image_ids, ablation_ids
        self.errors, self.attempted = errors or [], attempted or []
        self.decomposition = decomposition
        self.attribution = attribution

    def result(self) -> store.BatchResult:
        arrays = self.copy.arrays()
        emb = arrays.pop("embeddings", None)
        rows = None
        if self.decomposition is not None:
            found = {k[len(DECOMPOSED):]: arrays.pop(k) for k in list(arrays) if k.startswith(DECOMPOSED)}
            rows = self.decomposition.rows(found)
        attributed = None
        if self.attribution is not None:
            found = {k[len(ATTRIBUTED):]: arrays.pop(k) for k in list(arrays) if k.startswith(ATTRIBUTED)}
            attributed = self.attribution.rows(found)
        return store.BatchResult(np.array(self.image_ids, np.int64), np.array(self.ablation_ids, np.int16),
                                 Selection(**arrays), emb, self.errors, self.attempted, rows, attributed)


DECOMPOSED = "decomposition."  # the prefix of a batch's decomposition tensors among those copied to the host


@dataclass(frozen=True)
class Decomposed:
    """A batch's decomposition on the device (compute.decomposition.Decomposer's tensors, keyed as the fields of
    store.DecompositionRows), with what turns it into those rows on the host."""

    tensors: dict[str, torch.Tensor]
    direct_ablation_ids: list[int]
    vector_dtype: str

    def rows(self, arrays: dict[str, np.ndarray]) -> store.DecompositionRows:
        return store.DecompositionRows(direct_ablation_ids=np.array(self.direct_ablation_ids, np.int16),
                                       vector_dtype=self.vector_dtype, **arrays)


ATTRIBUTED = "attribution."  # the prefix of a batch's attribution tensors among those copied to the host
ATTRIBUTION_FIELDS = ("estimate", "metric", "pairs")  # compute.attribution.Attributor.batch's tensors


@dataclass(frozen=True)
class Attributed:
    """A batch's attribution on the device (compute.attribution.Attributor.batch's tensors), with what turns it
    into store.AttributionRows on the host: the estimate ids of its columns and the specs they cover."""

    tensors: dict[str, torch.Tensor]
    estimate_ids: list[int]
    specs: list[str]

    def rows(self, arrays: dict[str, np.ndarray]) -> store.AttributionRows:
        return store.AttributionRows(np.array(self.estimate_ids, np.int16), list(self.specs), arrays["estimate"],
                                     arrays["metric"], arrays["pairs"])


# --------------------------------------------------------------------------------------------------
# A batch of a run, scored: the sweep in this process (compute.runner), in a Ray actor (compute.ray_workers),
# and rescore (compute.rescore) all turn their embeddings into what the store commits here.


def stacked(emb_by: dict[Ablation, torch.Tensor], ablations: list[Ablation]) -> torch.Tensor:
    """The engine's embeddings {ablation: (n, E)} in the run's ablation order -> (n, A, E) float32 (a verified
    run's float32 trunk gives its baseline beside low-precision branches)."""
    return torch.stack([emb_by[a].float() for a in ablations], dim=1)


@dataclass(frozen=True)
class BatchScoring:
    """What scoring a batch needs that is the same for every batch of a run (made once per run, or per actor)."""

    text_norm: torch.Tensor  # (P, E) the prompts' normalised embeddings, on the device the image embeddings are
    scale: LogitScale
    keep: list[int]  # the ablation ids scored and written: those still pending (lifecycle.OpenRun.pending_ablations)
    embedding_dtype: str = "none"  # the image embeddings kept: float32 | float16 | none (rescore reads, keeps none)


def score_batch(scoring: BatchScoring, image_ids: list[int], truth: torch.Tensor, embeddings: torch.Tensor,
                logits: torch.Tensor | None = None, errors: list[tuple[int, str, str]] | None = None,
                attempted: list[int] | None = None, verified: torch.Tensor | None = None,
                decomposition: Decomposed | None = None, attribution: Attributed | None = None) -> PendingBatch:
    """One batch of a run -> what the store commits (``.result()``, a store.BatchResult), its copy to the host
    queued, not awaited.

    embeddings: (n, A, E) the images' embeddings under every ablation of the run, in its order; ablation 0, the
    baseline, is always there: its embedding judges score_baseline (float32's in a low-precision run, see
    compute.precision). truth: (n, P) bool (truth_matrix). logits: (n, A, P) the model's own (the plain
    method); None: the cosine logits of ``embeddings``. verified: (n, A) int8, which pairs hold float32 values
    (compute.precision.Swept.verified); None for none. Only the ``scoring.keep`` ablations are scored and
    written. decomposition: the images' decomposition, written with them (compute.decomposition); attribution
    likewise (compute.attribution)."""
    keep = scoring.keep
    baseline = embeddings[:, 0]  # (n, E)
    if len(keep) < embeddings.shape[1]:
        embeddings = embeddings[:, keep]
        logits = None if logits is None else logits[:, keep]
        verified = None if verified is None else verified[:, keep]
    if logits is None:
        logits = cosine_logits(embeddings, scoring.text_norm, scoring.scale)  # (n, A', P)
    return PendingBatch(image_ids, keep, logits, truth, baseline, scoring.text_norm, embeddings,
                        scoring.embedding_dtype, errors, attempted, verified, decomposition, attribution)
