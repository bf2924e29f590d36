"""The model's own pixels, made faster: how a decode worker turns an RGB image into exactly the values the
model's image processor would give (used by compute.loader).

- Rescaling and normalising are pointwise per channel on the uint8 values of the resized, centre-cropped
  image, so they are a table of 3 x 256 floats, read off the processor itself on a strip holding every value.
- The crop is the processor's own (called with ``do_rescale=False, do_normalize=False``) or, for the CLIP
  kind of processor (shortest edge, centre crop), one PIL resize and a slice, which skips the processor's
  array round trips at full resolution (2-3x less work per image).
- ``recipe()`` checks both against the whole processor on probe images of several shapes before a run
  starts; whatever does not give the same bytes is not used (in the end the workers run the processor whole).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

PROBE_SIZES = ((640, 480), (480, 640), (500, 500), (333, 1001), (97, 71), (225, 224))  # (width, height)


def _field(obj: object, key: str) -> object:
    """A key of a processor's size dict (a dict, or a SizeDict with attributes in newer transformers)."""
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


@dataclass(frozen=True)
class Recipe:
    """How workers turn a decoded RGB image into the model's pixels, exactly as the processor does."""

    processor: object  # the model's image processor
    size: tuple[int, int]  # (height, width) of the model's input
    table: np.ndarray | None  # (3, 256) float32: pixel value per channel and uint8 value; None: processor whole
    direct: tuple[int, int] | None  # (shortest edge, PIL resample) of the direct crop; None: the processor's crop
    ship_uint8: bool  # workers ship crops and the device applies the table

    @property
    def ship_dtype(self) -> np.dtype:
        return np.dtype(np.uint8 if self.ship_uint8 else np.float32)

    def crop(self, image: Image.Image) -> np.ndarray:
        """The resized, centre-cropped image. -> (3, height, width) uint8."""
        if self.direct is None:
            out = self.processor(images=[image], do_rescale=False, do_normalize=False, return_tensors="np")
            return np.asarray(out["pixel_values"][0])
        edge, resample = self.direct
        w, h = image.size
        # transformers' get_resize_output_image_size: the short edge becomes `edge`, the long one int(...)
        nw, nh = (edge, int(edge * h / w)) if w <= h else (int(edge * w / h), edge)
        arr = np.asarray(image.resize((nw, nh), resample=resample))  # (h, w, 3)
        ch, cw = self.size
        top, left = (nh - ch) // 2, (nw - cw) // 2
        return np.ascontiguousarray(arr[top : top + ch, left : left + cw].transpose(2, 0, 1))

    def without_processor(self) -> Recipe:
        """This recipe for a process that only decodes: when the direct crop and the table apply, the processor
        is never called, so it is left out (a Ray decode task then needs neither it nor transformers)."""
        return replace(self, processor=None) if self.direct is not None and self.table is not None else self

    def pixels(self, image: Image.Image) -> np.ndarray:
        """What a worker ships for one image: (3, height, width) uint8 crop, or float32 pixel values."""
        if self.table is None:
            out = self.processor(images=[image], return_tensors="np")["pixel_values"][0]
            return np.asarray(out, np.float32)
        crop = self.crop(image)
        if self.ship_uint8:
            return crop
        return np.stack([self.table[c][crop[c]] for c in range(3)])  # the table, per channel: exact


def probe_images(seed: int = 0) -> list[Image.Image]:
    """Smooth random RGB images of PROBE_SIZES: landscape, portrait, square, odd and tiny shapes."""
    rng = np.random.default_rng(seed)
    out = []
    for w, h in PROBE_SIZES:
        coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        grain = rng.integers(-20, 21, (h, w, 3))
        out.append(Image.fromarray(np.clip(np.asarray(coarse, np.int16) + grain, 0, 255).astype(np.uint8)))
    return out


def value_table(processor: object) -> np.ndarray:
    """(3, 256) float32: what the processor's rescale and normalise make of each uint8 value per channel."""
    strip = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)  # (1, 256, 3): every value
    out = processor(images=[Image.fromarray(strip)], do_resize=False, do_center_crop=False, return_tensors="np")
    return np.ascontiguousarray(np.asarray(out["pixel_values"][0])[:, 0, :], np.float32)  # (3, 256)


def _direct_candidate(processor: object) -> tuple[int, int] | None:
    """(shortest edge, resample) when the processor is of the shortest-edge + centre-crop kind."""
    size, crop = getattr(processor, "size", None), getattr(processor, "crop_size", None)
    edge = _field(size, "shortest_edge") if size is not None else None
    if not (getattr(processor, "do_resize", False) and getattr(processor, "do_center_crop", False) and edge):
        return None
    if _field(size, "longest_edge") or getattr(processor, "do_pad", False):
        return None
    ch, cw = _field(crop, "height"), _field(crop, "width")
    resample = getattr(processor, "resample", None)
    if not (ch and cw and ch <= edge and cw <= edge) or resample is None:
        return None
    return int(edge), int(resample)


def recipe(processor: object, ship_uint8: bool) -> Recipe:
    """The fastest recipe that gives the processor's own pixels on every probe image (checked here)."""
    probes = probe_images()
    want = [np.asarray(processor(images=[im], return_tensors="np")["pixel_values"][0]) for im in probes]
    size = (int(want[0].shape[1]), int(want[0].shape[2]))
    whole = Recipe(processor, size, None, None, False)
    if any(w.dtype != np.float32 or w.shape != want[0].shape for w in want):
        return whole
    try:
        table = value_table(processor)
    except Exception:  # a processor that cannot skip its resize: run it whole
        return whole
    tabled = Recipe(processor, size, table, None, False)
    crops = [tabled.crop(im) for im in probes]
    if any(c.dtype != np.uint8 or not np.array_equal(tabled.pixels(im), w) for c, im, w in zip(crops, probes, want,
                                                                                              strict=True)):
        return whole
    direct = _direct_candidate(processor)
    if direct is not None:
        fast = Recipe(processor, size, table, direct, False)
        if not all(np.array_equal(fast.crop(im), c) for im, c in zip(probes, crops, strict=True)):
            direct = None
    return Recipe(processor, size, table, direct, ship_uint8)
