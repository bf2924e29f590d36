"""The caption stage: the captioner continues each selected prompt for its image, and CLIP scores it.

The captioner is never ablated, so a caption depends only on (captioner, settings, image, prefix). The
stage generates each distinct key once, batched by prefix (equal prefixes need no padding), keeps it in
``caption_cache_t`` where later runs find it, then fills ``selection_t.caption`` and ``caption_score``
(cosine of the unablated CLIP image embedding with the caption's text embedding). Work is committed in
chunks; rows still NULL after an interruption are picked up by the next invocation.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from tqdm import tqdm

from compute import store
from compute.config import CaptionsConfig
from compute.dataset import ImageLoadError, open_image
from compute.models import LoadedCaptioner, LoadedClip
from compute.scoring import image_embeddings_unablated, normalise, text_embeddings


@torch.inference_mode()
def continue_prefix(cap: LoadedCaptioner, images: list[Image.Image], prefix: str, max_new_tokens: int = 20,
                    num_beams: int = 3) -> list[str]:
    """One caption per image, each continuing ``prefix``. Returns ``prefix`` + the generated continuation.

    Only the new tokens are decoded and the prefix is kept as written: decoding the whole sequence would
    lower-case it (BLIP) or drop its out-of-vocabulary words, and the caption would no longer start with
    the prompt it continues.
    """
    pixels = cap.image_processor(images=images, return_tensors="pt")["pixel_values"].to(cap.device, cap.dtype)
    n = len(images)
    settings = {"max_new_tokens": max_new_tokens, "num_beams": num_beams, "do_sample": False}
    if cap.kind == "blip":
        # BLIP's generate turns [CLS] into its decoder start token and drops the trailing [SEP].
        ids = cap.tokenizer(prefix, return_tensors="pt")["input_ids"].repeat(n, 1).to(cap.device)
        out = cap.model.generate(pixel_values=pixels, input_ids=ids, **settings)
        kept = ids.shape[1] - 1  # the output starts with [decoder start] + the prefix tokens
    else:
        start = cap.model.config.decoder_start_token_id
        ids = [start, *cap.tokenizer(prefix, add_special_tokens=False)["input_ids"]]
        ids = torch.tensor([ids] * n, device=cap.device)  # (n, prefix_tokens)
        if cap.tokenizer.pad_token_id is not None:  # BLIP sets its own; here it silences a warning
            settings["pad_token_id"] = cap.tokenizer.pad_token_id
        out = cap.model.generate(pixel_values=pixels, decoder_input_ids=ids,
                                 decoder_attention_mask=torch.ones_like(ids), **settings)
        kept = ids.shape[1]
    continuations = cap.tokenizer.batch_decode(out[:, kept:], skip_special_tokens=True)
    return [_join(prefix, text) for text in continuations]


def _join(prefix: str, continuation: str) -> str:
    words = " ".join(continuation.split())
    if words.startswith("##"):  # a word piece that continues the prefix's last word ("cat" + "##s")
        return prefix.rstrip() + words[2:]
    return f"{prefix.strip()} {words}".strip()


@dataclass
class CaptionStats:
    keys: int = 0  # distinct (image, prefix) pairs the run needed
    generated: int = 0  # captions generated now (the rest came from the cache)
    generate_calls: int = 0  # batched generate() calls

    def describe(self) -> str:
        return (f"captions: {self.keys} distinct (image, prefix) pairs: {self.generated} generated in "
                f"{self.generate_calls} batched calls, {self.keys - self.generated} from the cache")


def caption_stage(db: Path, run_id: int, clip: LoadedClip, cap: LoadedCaptioner, cfg: CaptionsConfig,
                  key: str, embedding_dtype: str, embedding_run_id: int | None = None,
                  progress: bool = True, prefixes: dict[str, str] | None = None) -> CaptionStats:
    """Fill caption and caption_score for every selection of the run that has none.

    key: the captioner's cache key (store.caption_key); embedding_run_id: the run whose stored embeddings
    serve this one (default: itself); prefixes: the text to continue for a stored prompt text that is not
    itself a prompt (an ensemble's name -> its first text; compute.prompts.Prompt).
    """
    stats = CaptionStats()
    prefixes = prefixes or {}
    with store.connect(db) as con:
        pending = [(i, p, prefixes.get(prefix, prefix), path)  # (image_id, prompt_id, prefix, path)
                   for i, p, prefix, path in store.pending_captions(con, run_id)]
        cached = store.cached_captions(con, key, sorted({row[3] for row in pending}))
    stats.keys = len(pending)
    if not pending:
        return stats

    # 1. Generate the missing captions, grouped by prefix, committed to the cache chunk by chunk.
    missing = [row for row in pending if (row[3], row[2]) not in cached]
    by_prefix: dict[str, list[tuple]] = {}
    for row in missing:
        by_prefix.setdefault(row[2], []).append(row)
    bar = tqdm(total=len(missing), unit="caption", desc="captions", disable=not progress or not missing,
               file=sys.stderr)
    try:
        for prefix, rows in by_prefix.items():
            for i in range(0, len(rows), cfg.batch_size):
                chunk, images, errors = [], [], []
                for row in rows[i : i + cfg.batch_size]:
                    try:
                        images.append(open_image(Path(row[3])))
                        chunk.append(row)
                    except ImageLoadError as e:
                        errors.append((row[0], str(e)))
                texts = continue_prefix(cap, images, prefix, cfg.max_new_tokens, cfg.num_beams) if images else []
                stats.generate_calls += bool(images)
                stats.generated += len(texts)
                with store.connect(db) as con:
                    store.add_captions(con, key, [(row[3], prefix, text) for row, text in
                                                  zip(chunk, texts, strict=True)], errors, run_id)
                cached.update({(row[3], prefix): text for row, text in zip(chunk, texts, strict=True)})
                bar.update(len(rows[i : i + cfg.batch_size]))
    finally:
        bar.close()

    # 2. Score each distinct caption against the unablated image embedding, and fill the selections.
    done = [row for row in pending if (row[3], row[2]) in cached]
    if not done:
        return stats
    image_ids = sorted({row[0] for row in done})
    base = _baseline_embeddings(db, embedding_run_id or run_id, clip, image_ids, {row[0]: row[3] for row in done},
                                embedding_dtype)
    captions = sorted({cached[(row[3], row[2])] for row in done})
    text = text_embeddings(clip, captions).cpu()  # (captions, E), normalised; beside base on the CPU
    text_index = {c: i for i, c in enumerate(captions)}
    image_index = {img: i for i, img in enumerate(image_ids)}
    caption_of = [cached[(row[3], row[2])] for row in done]
    scores = (base[[image_index[row[0]] for row in done]] * text[[text_index[c] for c in caption_of]]).sum(-1)
    filled = pa.table({
        "image_id": pa.array([row[0] for row in done], pa.int64()),
        "prompt_id": pa.array([row[1] for row in done], pa.int16()),
        "caption": caption_of,
        "caption_score": pa.array(scores.cpu().numpy().astype(np.float32)),
    })
    with store.connect(db) as con:
        store.fill_captions(con, run_id, filled)
    return stats


def _baseline_embeddings(db: Path, run_id: int, clip: LoadedClip, image_ids: list[int], paths: dict[int, str],
                         embedding_dtype: str) -> torch.Tensor:
    """Normalised unablated image embeddings (images, E): stored ones if the run kept them, else computed."""
    found: dict[int, np.ndarray] = {}
    if embedding_dtype != "none":
        with store.connect(db, read_only=True) as con:
            keys, stored = store.embeddings(con, run_id, image_ids, embedding_dtype, baseline_only=True)
        found = {image_id: stored[k] for k, (image_id, _) in enumerate(keys)}
    missing = [i for i in image_ids if i not in found]
    if missing:
        computed = image_embeddings_unablated(clip, [Path(paths[i]) for i in missing])
        found.update({i: computed[k] for k, i in enumerate(missing)})
    return normalise(torch.from_numpy(np.stack([found[i] for i in image_ids])))
