"""The one place that knows about hub ids, local model folders, dtypes, devices and processors.

Model classes and the engine never see a path or a URL: they get a loaded model in eval mode, of one of the
families of compute.towers (``CLIPModel``, ``SiglipModel``, ``Siglip2Model``), with its processor;
``LoadedClip.image_processor`` (what the loader's workers call) and ``pixel_values`` turn images into the
model's pixels, (n, 3, size, size) for every family. Offline (HF_HUB_OFFLINE=1) a hub id that is not in
the local cache fails with a clear InputError, and so does a checkpoint whose weights are not the ones its
config.json describes (``from_pretrained``). Every image processor is transformers' PIL one (``BACKEND``).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from compute.devices import TORCH_DTYPES, DtypeChoice, resolve_device, resolve_dtype
from compute.errors import InputError
from compute.towers import FAMILIES, embedding_width, grid_side, has_cls, unpatchify

# transformers picks a torchvision-backed image processor wherever torchvision is installed (most GPU machines)
# and a PIL one elsewhere; the two resize differently, so the same image would give different pixels, logits and
# selections on a laptop and a GPU server, or on two nodes of one Ray run. The PIL one everywhere: the same
# pixels on every machine, the ones compute.pixels' fast paths are checked against, and no torch in a decode
# worker.
BACKEND = {"backend": "pil"}


def quiet_transformers() -> None:
    """No loading bars or warnings from transformers: a run's output is its own bar and summary."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


@dataclass
class LoadedClip:
    model: nn.Module  # CLIPModel, SiglipModel or Siglip2Model, eval mode, on device
    processor: object  # its processor (image processor + tokenizer)
    device: torch.device
    dtype: torch.dtype
    name: str  # the reference it was loaded from
    family: str = "clip"  # a key of towers.FAMILIES
    logit_scale: float = 1.0  # exp(model.logit_scale), read in float32 before any cast to dtype
    logit_bias: float = 0.0  # SigLIP's learned logit_bias (added after the scale); 0 for CLIP

    @property
    def image_processor(self) -> object:
        """Called as ``image_processor(images=[...], return_tensors="pt"|"np")["pixel_values"]`` -> (n, 3, size,
        size): the family's own image processor, or for SigLIP 2 NaFlex NativeGridProcessor around it."""
        if self.family == "siglip2":
            vc = self.model.config.vision_config
            return NativeGridProcessor(self.processor.image_processor, grid_side(self.model), int(vc.patch_size))
        return self.processor.image_processor


class NativeGridProcessor:
    """SigLIP 2 NaFlex's image processor at the model's native square grid, returning images.

    Each image is resized to side·p x side·p first (bilinear, aspect ratio not kept, as SigLIP's own
    processor does), so the NaFlex processor keeps that grid with no padding patch; its patches are laid back
    into an image, (3, side·p, side·p), the values untouched (towers.patchify makes them again exactly).
    """

    def __init__(self, processor: object, side: int, patch: int) -> None:
        self.processor, self.side, self.patch = processor, side, patch

    def __call__(self, images: list[Image.Image], return_tensors: str = "pt") -> dict[str, object]:
        size = self.side * self.patch
        square = [im.convert("RGB").resize((size, size), Image.BILINEAR) for im in images]
        out = self.processor(images=square, patch_size=self.patch, max_num_patches=self.side * self.side,
                             return_tensors="pt")
        if not bool((out["spatial_shapes"] == self.side).all()) or not bool(out["pixel_attention_mask"].all()):
            raise ValueError(f"the image processor did not keep the native {self.side}x{self.side} grid")
        pixels = unpatchify(out["pixel_values"].float(), self.side, self.patch)  # (n, 3, size, size)
        return {"pixel_values": pixels.numpy() if return_tensors == "np" else pixels}

    @property
    def image_mean(self) -> object:
        return self.processor.image_mean

    @property
    def image_std(self) -> object:
        return self.processor.image_std


def _check_local(ref: str, what: str) -> None:
    path = Path(ref)
    if path.is_absolute() or ref.startswith("."):
        if not path.is_dir():
            raise InputError(f"{what} directory not found: {ref}")
        if not (path / "config.json").is_file():
            raise InputError(f"{what} directory {ref} has no config.json (expected a save_pretrained folder)")


def _model_type(ref: str, what: str) -> str:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(ref).model_type
    except (OSError, ValueError) as e:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " (HF_HUB_OFFLINE=1: only models already in the local cache load)" if offline else ""
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"cannot load {what} {ref!r}{hint}: {first}") from None


SHOWN_KEYS = 3  # weight names an error line lists


def from_pretrained(model_class: type, ref: str, what: str, **kwargs: object) -> nn.Module:
    """``model_class.from_pretrained(ref, **kwargs)``, refused (InputError, one line) unless the checkpoint's
    weights are exactly the ones its config.json describes.

    transformers loads a config that declares 3 layers over 12-layer weights by dropping 9 layers with a
    warning, fills weights the checkpoint lacks with random values, and (with ignore_mismatched_sizes)
    re-initialises weights of another shape: each would run a different model with exit code 0. What it
    ignores by design (buffers such as ``position_ids``, tied weights, the class's own ignore lists) is not
    in its loading info, so it is not refused here.
    """
    model, info = model_class.from_pretrained(ref, output_loading_info=True, ignore_mismatched_sizes=True,
                                              **kwargs)
    problems = []
    if unexpected := sorted(info.get("unexpected_keys") or ()):
        problems.append(f"{len(unexpected)} weight(s) the config has no place for ({_keys(unexpected)})")
    if missing := sorted(info.get("missing_keys") or ()):
        problems.append(f"{len(missing)} weight(s) the config needs are not in the checkpoint ({_keys(missing)})")
    if mismatched := sorted(info.get("mismatched_keys") or (), key=lambda m: m[0]):
        key, stored, wanted = mismatched[0]
        problems.append(f"{len(mismatched)} weight(s) of another shape ({key}: {tuple(stored)} in the checkpoint, "
                        f"{tuple(wanted)} for the config)")
    if problems:
        where = Path(ref) / "config.json" if Path(ref).is_dir() else f"the config.json of {ref}"
        raise InputError(f"{what} {ref}: {where} does not match its weights: {'; '.join(problems)}")
    return model


def _keys(keys: list[str]) -> str:
    more = f", ... {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""
    return ", ".join(keys[:SHOWN_KEYS]) + more


def _classes(family: str) -> tuple[type, type]:
    """(model class, processor class) of a family."""
    import transformers

    names = {"clip": ("CLIPModel", "CLIPProcessor"), "siglip": ("SiglipModel", "SiglipProcessor"),
             "siglip2": ("Siglip2Model", "Siglip2Processor")}[family]
    return getattr(transformers, names[0]), getattr(transformers, names[1])


def _damaged_weights(ref: str, e: Exception) -> InputError:
    """A weights file that cannot be read (cut short, overwritten) as one line naming it: safetensors' own
    error does not say which file of the model it was reading."""
    from safetensors import SafetensorError, safe_open

    name, why = "a weights file", str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    for path in sorted(Path(ref).glob("*.safetensors")) if Path(ref).is_dir() else []:
        try:
            safe_open(str(path), framework="pt").keys()
        except (SafetensorError, OSError) as bad:
            name, why = str(path), str(bad).strip().splitlines()[0]
            break
    return InputError(f"cannot load {ref!r}: {name} is damaged ({why}); download or save the model again")


def load_clip(name_or_path: str, device: str = "auto", dtype: str = "float32") -> LoadedClip:
    """A CLIP, SigLIP or SigLIP 2 model and its processor from a hub id or a save_pretrained folder.

    The family comes from the config's model_type. ``logit_scale`` and ``logit_bias`` stay float32 whatever
    ``dtype`` the towers get (bfloat16 would round exp(logit_scale) by about 1.5%), both in the returned
    fields and inside the model, so its own logits_per_image use them unrounded. ``dtype``: float32,
    bfloat16, float16, or auto (resolve_dtype).
    """
    _check_local(name_or_path, "model")
    family = _model_type(name_or_path, "model")
    if family not in FAMILIES:
        supported = "; ".join(f"{k} ({v})" for k, v in FAMILIES.items())
        raise InputError(f"{name_or_path} is not a supported model (its config says model_type = {family!r}); "
                         f"supported families: {supported}")
    dev = resolve_device(device)
    used = resolve_dtype(dtype, dev).used
    model_class, processor_class = _classes(family)
    from safetensors import SafetensorError

    try:
        model = from_pretrained(model_class, name_or_path, "model", dtype=torch.float32)  # cast below
        processor = processor_class.from_pretrained(name_or_path, **BACKEND)
    except ImportError as e:  # e.g. SigLIP's sentencepiece tokenizer without the sentencepiece package
        hint = "; install it with: pip install sentencepiece" if "sentencepiece" in str(e).lower() else ""
        raise InputError(f"cannot load {family} {name_or_path!r}: {str(e).strip().splitlines()[0]}{hint}") from None
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load {family} {name_or_path!r}: {str(e).strip().splitlines()[0]}") from None
    except SafetensorError as e:  # not an OSError: a weights file cut short or overwritten
        raise _damaged_weights(name_or_path, e) from None
    if family != "clip" and not model.config.vision_config.vision_use_head:
        raise InputError(f"{name_or_path}: its vision tower has no pooling head (vision_use_head = false), so it "
                         f"makes no image embedding to score")
    model.to(dev).eval()
    for name in ("logit_scale", "logit_bias") if family != "clip" else ("logit_scale",):
        getattr(model, name).requires_grad_(False)  # read as plain numbers, as with_dtype leaves them
    bias = float(model.logit_bias.detach().float()) if family != "clip" else 0.0
    clip = LoadedClip(model, processor, dev, torch.float32, name_or_path, family,
                      float(model.logit_scale.detach().float().exp()), bias)
    return clip if used == "float32" else with_dtype(clip, used, copy_model=False)


def with_dtype(clip: LoadedClip, dtype: str, copy_model: bool = True) -> LoadedClip:
    """A float32 ``clip`` in ``dtype`` (a copy of the model unless ``copy_model`` is False); logit_scale
    and logit_bias stay float32 parameters inside it, so its own logits_per_image come out float32, and its
    quick_gelu MLPs compute through SiLU (``fold_quick_gelu``: the same function, faster in low precision)."""
    if clip.dtype != torch.float32:
        raise ValueError(f"with_dtype starts from a float32 model, not {clip.dtype}")
    model = copy.deepcopy(clip.model) if copy_model else clip.model
    names = [name for name in ("logit_scale", "logit_bias") if isinstance(getattr(model, name, None), nn.Parameter)]
    scalars = {name: getattr(model, name).detach().float().clone() for name in names}  # (1,) each
    fold_quick_gelu(model)
    model.to(TORCH_DTYPES[dtype])
    for name, value in scalars.items():
        setattr(model, name, nn.Parameter(value, requires_grad=False))
    return dataclasses.replace(clip, model=model, dtype=TORCH_DTYPES[dtype])


QUICK_GELU = 1.702  # transformers' QuickGELUActivation: z * sigmoid(1.702 z)


def fold_quick_gelu(model: nn.Module) -> int:
    """Every MLP of ``model`` whose activation is quick_gelu (OpenAI's CLIP) made to compute the same function
    with one elementwise pass instead of three: z * sigmoid(a z) = silu(a z) / a, so with ``a`` folded into fc1
    (weight and bias) and 1/a into fc2's weight, the activation is SiLU. In bfloat16 on a CPU the three passes
    (mul, sigmoid, mul) were 16% of the sweep and SiLU takes a third of their time (docs/precision.md), the
    matrix products being the part that low precision speeds up. Used on low-precision copies only
    (``with_dtype``, on the float32 weights before the cast): a float32 run keeps the model's own arithmetic,
    bit for bit. Returns how many MLPs were folded."""
    from transformers.activations import QuickGELUActivation

    folded = 0
    for mlp in model.modules():
        if isinstance(getattr(mlp, "activation_fn", None), QuickGELUActivation) and hasattr(mlp, "fc1"):
            with torch.no_grad():
                mlp.fc1.weight.mul_(QUICK_GELU)
                if mlp.fc1.bias is not None:
                    mlp.fc1.bias.mul_(QUICK_GELU)
                mlp.fc2.weight.div_(QUICK_GELU)
            mlp.activation_fn = nn.SiLU()
            folded += 1
    return folded


def load_pair(name_or_path: str, device: str, dtype: str, exact: LoadedClip | None = None,
              ) -> tuple[LoadedClip, LoadedClip, DtypeChoice]:
    """What a sweep computes with: (the float32 model, the model in the dtype the run computes in, the
    choice). One model for float32 runs; below, a copy cast from the float32 one. ``exact``: a float32 model
    already loaded from ``name_or_path`` (loaded here when None or not float32)."""
    if exact is None or exact.dtype != torch.float32:
        exact = load_clip(name_or_path, device, "float32")
    choice = resolve_dtype(dtype, exact.device)
    return exact, (exact if choice.used == "float32" else with_dtype(exact, choice.used)), choice


def pixel_values(clip: LoadedClip, images: list[Image.Image]) -> torch.Tensor:
    """The model's pixels for RGB images, float32 on the CPU: (n, 3, size, size), as clip.image_processor
    makes them (for siglip2 the native square grid; towers.image_inputs patchifies them for the model)."""
    return torch.as_tensor(clip.image_processor(images=images, return_tensors="pt")["pixel_values"])


def seen_image(clip: LoadedClip, pixels: torch.Tensor) -> np.ndarray:
    """One image as the model saw it (resized, cropped), from its pixel_values row (3, size, size):
    (size, size, 3) uint8."""
    processor = clip.image_processor
    mean = torch.tensor(processor.image_mean, dtype=torch.float32)
    std = torch.tensor(processor.image_std, dtype=torch.float32)
    x = pixels.detach().float().cpu().permute(1, 2, 0)
    return ((x * std + mean).clamp(0, 1) * 255).round().byte().numpy()


def model_summary(loaded: LoadedClip) -> dict[str, object]:
    """A few facts about the vision tower, stored with the run (the dashboard and exports read ``family``)."""
    vc = loaded.model.config.vision_config
    side = grid_side(loaded.model)
    return {
        "family": loaded.family,
        "layers": vc.num_hidden_layers,
        "width": vc.hidden_size,
        "heads": vc.num_attention_heads,
        "image_size": side * vc.patch_size,
        "patch_size": vc.patch_size,
        "tokens": side * side + has_cls(loaded.model),
        "cls_token": has_cls(loaded.model),
        "projection_dim": embedding_width(loaded.model),  # the width of the compared embeddings
        "logit_scale": loaded.logit_scale,
        "logit_bias": loaded.logit_bias,
    }


CAPTIONER_TYPES = ("blip", "vision-encoder-decoder")


@dataclass
class LoadedCaptioner:
    """A conditional captioner: it continues a text prefix for an image (never ablated)."""

    model: nn.Module  # BlipForConditionalGeneration or VisionEncoderDecoderModel, eval mode
    image_processor: object
    tokenizer: object
    kind: str  # one of CAPTIONER_TYPES
    device: torch.device
    dtype: torch.dtype
    name: str


def load_captioner(name_or_path: str, device: str = "auto", dtype: str = "float32") -> LoadedCaptioner:
    """BLIP conditional captioning (e.g. Salesforce/blip-image-captioning-base) or a
    VisionEncoderDecoderModel, from a hub id or a save_pretrained folder."""
    from transformers import (
        AutoImageProcessor,
        AutoTokenizer,
        BlipForConditionalGeneration,
        BlipProcessor,
        VisionEncoderDecoderModel,
    )

    _check_local(name_or_path, "captioner")
    kind = _model_type(name_or_path, "captioner")
    if kind not in CAPTIONER_TYPES:
        raise InputError(
            f"{name_or_path} is not a supported captioner (model_type = {kind!r}; "
            f"supported: BLIP conditional captioning, vision-encoder-decoder)"
        )
    dev = resolve_device(device)
    torch_dtype = TORCH_DTYPES[resolve_dtype(dtype, dev).used]
    from safetensors import SafetensorError

    try:
        if kind == "blip":
            model = from_pretrained(BlipForConditionalGeneration, name_or_path, "captioner", dtype=torch_dtype)
            processor = BlipProcessor.from_pretrained(name_or_path, **BACKEND)
            image_processor, tokenizer = processor.image_processor, processor.tokenizer
        else:
            model = from_pretrained(VisionEncoderDecoderModel, name_or_path, "captioner", dtype=torch_dtype)
            image_processor = AutoImageProcessor.from_pretrained(name_or_path, **BACKEND)
            tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load captioner {name_or_path!r}: {str(e).strip().splitlines()[0]}") from None
    except SafetensorError as e:  # not an OSError: a weights file cut short or overwritten
        raise _damaged_weights(name_or_path, e) from None
    model.to(dev).eval()
    return LoadedCaptioner(model, image_processor, tokenizer, kind, dev, torch_dtype, name_or_path)
