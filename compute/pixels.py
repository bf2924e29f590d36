"""The model's own pixels, made faster: how a decode worker turns a decoded image (any mode) into exactly the
values the model's image processor would give (``load``: one image file to them, what compute.loader's
workers and run --ray's decode tasks run).

- The reference is the processor on the image after ``compute.dataset.eight_bit`` (16-bit images scaled to 8
  bits, where the processor would clip them to white): its own conversion to RGB composites transparency
  onto white. A processor that does not convert to RGB itself is given ``compute.dataset.to_rgb``'s image.

- Rescaling and normalising are pointwise per channel on the uint8 values of the resized, centre-cropped
  image, so they are a table of 3 x 256 floats, read off the processor itself on a strip holding every value.
- The crop is the processor's own (called with ``do_rescale=False, do_normalize=False``) or, for the CLIP
  kind of processor (shortest edge, centre crop), one PIL resize and a slice, which skips the processor's
  array round trips at full resolution (2-3x less work per image).
- The fast paths convert with ``compute.dataset.to_rgb`` first. ``recipe()`` checks them against the whole
  processor on probe images of several shapes and of every image mode (transparent, palette, 16-bit, CMYK,
  float...) before a run starts; whatever does not give the same bytes is not used (in the end the workers
  run the processor whole, on the reference image).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from compute.dataset import ImageLoadError, ImageRecord, decode, eight_bit, to_rgb

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

    def reference(self, image: Image.Image) -> Image.Image:
        """What the processor is given for a decoded image: ``eight_bit`` when it converts to RGB itself (its
        own conversion is the reference), else ``to_rgb``."""
        return eight_bit(image) if converts_to_rgb(self.processor) else to_rgb(image)

    def crop(self, image: Image.Image) -> np.ndarray:
        """The resized, centre-cropped image of an RGB image. -> (3, height, width) uint8."""
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
        """What a worker ships for one decoded image (any mode): (3, height, width) uint8 crop, or float32
        pixel values."""
        if self.table is None:
            out = self.processor(images=[self.reference(image)], return_tensors="np")["pixel_values"][0]
            return np.asarray(out, np.float32)
        crop = self.crop(to_rgb(image))
        return crop if self.ship_uint8 else table_values(self.table, crop)


def converts_to_rgb(processor: object) -> bool:
    """Whether the processor converts images to RGB itself (transformers' ``do_convert_rgb``)."""
    return bool(getattr(processor, "do_convert_rgb", False))


def _smooth(rng: np.random.Generator, w: int, h: int, channels: int = 3) -> np.ndarray:
    """A smooth random image with grain, (h, w, channels) uint8: photo-like, every value of a channel used."""
    coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    grain = rng.integers(-20, 21, (h, w, 3))
    return np.clip(np.asarray(coarse, np.int16) + grain, 0, 255).astype(np.uint8)[..., :channels]


def mode_probes(seed: int = 1, size: tuple[int, int] = (97, 71)) -> dict[str, Image.Image]:
    """One probe image per image mode a decoder can give, each with the features its conversion to RGB
    depends on: alpha from 0 to 255, a palette with a transparent index, a transparent colour, 16-bit and
    32-bit integer samples over their whole range, floats, CMYK, YCbCr, bilevel."""
    rng = np.random.default_rng(seed)
    w, h = size
    rgb = Image.fromarray(_smooth(rng, w, h))
    alpha = Image.fromarray(_smooth(rng, w, h, 1)[..., 0])
    grey = rgb.convert("L")
    wide = _smooth(rng, w, h, 2).astype(np.int64)
    sixteen = (wide[..., 0] << 8) | wide[..., 1]  # (h, w) over 0..65535
    palette = rgb.quantize(64)
    palette.info["transparency"] = int(np.asarray(palette)[h // 2, w // 2])
    alphas = rgb.quantize(64)  # a PNG tRNS chunk: an alpha value per palette entry
    alphas.info["transparency"] = bytes(rng.integers(0, 256, 64, dtype=np.uint8))
    keyed = rgb.copy()
    keyed.info["transparency"] = tuple(int(v) for v in np.asarray(rgb)[h // 3, w // 3])
    grey_keyed = grey.copy()
    grey_keyed.info["transparency"] = int(np.asarray(grey)[h // 3, w // 3])
    deep_keyed = Image.fromarray(sixteen.astype(np.uint16))
    deep_keyed.info["transparency"] = int(sixteen[h // 4, w // 4])
    rgba = rgb.copy()
    rgba.putalpha(alpha)
    la = grey.copy()
    la.putalpha(alpha)
    pa = palette.convert("PA")
    pa.putalpha(alpha)
    return {
        "RGB": rgb, "RGBA": rgba, "LA": la, "PA": pa, "P": rgb.quantize(200), "P+transparency": palette,
        "P+alpha table": alphas,
        "RGB+transparency": keyed, "L": grey, "L+transparency": grey_keyed, "1": grey.convert("1"),
        "CMYK": rgb.convert("CMYK"), "YCbCr": rgb.convert("YCbCr"),
        "I;16": Image.fromarray(sixteen.astype(np.uint16)), "I;16B": Image.fromarray(sixteen.astype(">u2")),
        "I;16+transparency": deep_keyed, "I": Image.fromarray((sixteen * 3 - 30000).astype(np.int32)),
        "F": Image.fromarray((wide[..., 0] * 1.2 - 20 + wide[..., 1] / 256).astype(np.float32)),
    }


def _shape_probes(seed: int) -> Iterator[Image.Image]:
    """Smooth random RGB images of PROBE_SIZES, in order, drawn from one generator (lazily: a caller may take one)."""
    rng = np.random.default_rng(seed)
    for w, h in PROBE_SIZES:
        yield Image.fromarray(_smooth(rng, w, h))


def probe_images(seed: int = 0) -> list[Image.Image]:
    """Smooth random RGB images of PROBE_SIZES (landscape, portrait, square, odd and tiny shapes), then one
    image of every mode (``mode_probes``)."""
    return list(_shape_probes(seed)) + list(mode_probes(seed + 1).values())


def probe_image(seed: int = 0) -> Image.Image:
    """``probe_images(seed)[0]`` alone, for a check that needs one image, not all 24."""
    return next(_shape_probes(seed))


def table_values(table: np.ndarray, crop: np.ndarray) -> np.ndarray:
    """(3, 256) table, (3, h, w) uint8 crop -> (3, h, w) float32 pixel values: the table, per channel (exact)."""
    return np.stack([table[c][crop[c]] for c in range(3)])


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


# (processor class, its attributes, ship_uint8) -> the recipe found for it, without the processor. A processor
# does what its class and its attributes say (what save_pretrained writes and from_pretrained restores), so a
# second processor alike gets the recipe checked for the first: the check costs 0.2-0.3 s of CPU, once per
# run, and a process that makes several runs (the demo, a sweep of experiments, the tests) makes it once.
_RECIPES: dict[tuple, Recipe] = {}


def recipe(processor: object, ship_uint8: bool) -> Recipe:
    """The fastest recipe that gives the processor's own pixels (on ``Recipe.reference``) on every probe
    image, of every shape and mode (checked here, once per kind of processor in a process)."""
    try:
        key = (type(processor), repr(sorted(vars(processor).items())), ship_uint8)
    except TypeError:  # no __dict__: never cached
        key = None
    if key is not None and key in _RECIPES:
        return replace(_RECIPES[key], processor=processor)
    found = _recipe(processor, ship_uint8)
    if key is not None:
        if found.table is not None:
            found.table.setflags(write=False)  # shared by every recipe made from this one
        _RECIPES[key] = replace(found, processor=None)
    return found


def _recipe(processor: object, ship_uint8: bool) -> Recipe:
    whole = Recipe(processor, (0, 0), None, None, False)
    probes, want = [], []
    for k, im in enumerate(probe_images()):
        try:
            want.append(np.asarray(processor(images=[whole.reference(im)], return_tensors="np")["pixel_values"][0]))
        except Exception:
            if k < len(PROBE_SIZES):  # an RGB image it cannot take: not a processor a run can use
                raise
            continue  # a mode the processor rejects: such an image becomes an error row, whatever the recipe
        probes.append(im)
    size = (int(want[0].shape[1]), int(want[0].shape[2]))
    whole = replace(whole, size=size)
    if any(w.dtype != np.float32 or w.shape != want[0].shape for w in want):
        return whole
    try:
        table = value_table(processor)
    except Exception:  # a processor that cannot skip its resize: run it whole
        return whole
    tabled = Recipe(processor, size, table, None, False)
    crops = [tabled.crop(to_rgb(im)) for im in probes]  # what tabled.pixels maps through the table
    if any(c.dtype != np.uint8 or not np.array_equal(table_values(table, c), w) for c, w in zip(crops, want,
                                                                                              strict=True)):
        return whole
    direct = _direct_candidate(processor)
    if direct is not None:
        fast = Recipe(processor, size, table, direct, False)
        if not all(np.array_equal(fast.crop(to_rgb(im)), c) for im, c in zip(probes, crops, strict=True)):
            direct = None
    return Recipe(processor, size, table, direct, ship_uint8)


def load(recipe: Recipe, record: ImageRecord) -> np.ndarray:
    """Decode and prepare one image (what a worker ships). Raises ImageLoadError when it cannot be used."""
    image = decode(record.path, record.root)  # only a regular file inside the images folder is read
    try:
        return recipe.pixels(image)
    except Exception as e:  # a processor that rejects this image: an error row, not a failed run
        raise ImageLoadError(f"cannot preprocess {record.file_name}: {type(e).__name__}: {e}") from None
