"""The one place that knows about hub ids, local model folders, dtypes and devices.

Model classes and the engine never see a path or a URL: they get a loaded ``CLIPModel`` in eval mode.
Offline (HF_HUB_OFFLINE=1) a hub id that is not in the local cache fails with a clear InputError.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from compute.errors import InputError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str = "auto") -> torch.device:
    """auto picks cuda, then mps, then cpu; an explicit device that is not available is an InputError."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("device = 'cuda' but no CUDA GPU is available here (use 'auto' or 'cpu')")
    if device == "mps" and not torch.backends.mps.is_available():
        raise InputError("device = 'mps' but Apple's MPS backend is not available here (use 'auto' or 'cpu')")
    if device not in ("cpu", "cuda", "mps"):
        raise InputError(f"unknown device {device!r}: use auto, cpu, cuda or mps")
    return torch.device(device)


@dataclass
class LoadedClip:
    model: nn.Module  # transformers.CLIPModel, eval mode, on device
    processor: object  # transformers.CLIPProcessor (image processor + tokenizer)
    device: torch.device
    dtype: torch.dtype
    name: str  # the reference it was loaded from

    @property
    def n_layers(self) -> int:
        return len(self.model.vision_model.encoder.layers)

    @property
    def n_heads(self) -> int:
        return int(self.model.config.vision_config.num_attention_heads)


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


def load_clip(name_or_path: str, device: str = "auto", dtype: str = "float32") -> LoadedClip:
    """A CLIPModel and its CLIPProcessor from a hub id or a save_pretrained folder."""
    from transformers import CLIPModel, CLIPProcessor

    _check_local(name_or_path, "model")
    model_type = _model_type(name_or_path, "model")
    if model_type != "clip":
        raise InputError(f"{name_or_path} is not a CLIP model (its config says model_type = {model_type!r})")
    dev = resolve_device(device)
    torch_dtype = DTYPES[dtype]
    if dev.type == "cpu" and torch_dtype == torch.float16:
        raise InputError("dtype = 'float16' needs a GPU; on the CPU use float32 (or bfloat16)")
    try:
        # Loaded in float32 and cast after, so logit_scale can stay float32: in bfloat16, exp(ln 100) is
        # 98.86, and every logit and probability of the run would shrink about 1%.
        model = CLIPModel.from_pretrained(name_or_path, dtype=torch.float32)
        processor = CLIPProcessor.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load CLIP {name_or_path!r}: {str(e).strip().splitlines()[0]}") from None
    if torch_dtype != torch.float32:
        scale = model.logit_scale.detach().clone()  # () float32, as stored (or upcast from the checkpoint)
        model.to(torch_dtype)
        model.logit_scale.data = scale
    model.to(dev).eval()
    return LoadedClip(model, processor, dev, torch_dtype, name_or_path)


def model_summary(loaded: LoadedClip) -> dict[str, object]:
    """A few facts about the vision tower, stored with the run."""
    vc = loaded.model.config.vision_config
    return {
        "layers": vc.num_hidden_layers,
        "width": vc.hidden_size,
        "heads": vc.num_attention_heads,
        "image_size": vc.image_size,
        "patch_size": vc.patch_size,
        "projection_dim": loaded.model.config.projection_dim,
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
    torch_dtype = DTYPES[dtype]
    try:
        if kind == "blip":
            model = BlipForConditionalGeneration.from_pretrained(name_or_path, dtype=torch_dtype)
            processor = BlipProcessor.from_pretrained(name_or_path)
            image_processor, tokenizer = processor.image_processor, processor.tokenizer
        else:
            model = VisionEncoderDecoderModel.from_pretrained(name_or_path, dtype=torch_dtype)
            image_processor = AutoImageProcessor.from_pretrained(name_or_path)
            tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load captioner {name_or_path!r}: {str(e).strip().splitlines()[0]}") from None
    model.to(dev).eval()
    return LoadedCaptioner(model, image_processor, tokenizer, kind, dev, torch_dtype, name_or_path)
