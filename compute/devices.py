"""Where a model runs and in what precision: the device ("auto": cuda, then mps, then cpu) and the dtype,
where "auto" picks the fastest one the hardware runs well (bfloat16 on a CPU with AMX-BF16 or AVX512-BF16,
on a CUDA GPU that supports it; float16 on other GPUs). Below float32 every selection is checked in
float32 (compute.precision). compute.models loads models with these choices; nothing else decides them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from compute.config import DTYPE_CHOICES, DTYPES
from compute.errors import InputError

TORCH_DTYPES = {name: getattr(torch, name) for name in DTYPES}  # the experiment file's model.dtype names


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


# --------------------------------------------------------------------------------------------------
# Precision: which dtype a run computes in. Below float32 the sweep checks its selections in float32
# (compute.precision), so "auto" may pick the fastest dtype the hardware runs well.

CPU_BF16_FLAGS = {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX512-BF16"}  # /proc/cpuinfo flags, in order


@dataclass(frozen=True)
class DtypeChoice:
    """What a run asked for (model.dtype, --dtype), what it computes in, and why; stored with the run."""

    asked: str  # one of config.DTYPE_CHOICES
    used: str  # one of config.DTYPES
    why: str

    @property
    def verified(self) -> bool:
        """Below float32 every selection is checked in float32 (compute.precision)."""
        return self.used != "float32"

    def record(self) -> dict[str, object]:
        return {"asked": self.asked, "used": self.used, "why": self.why, "verified": self.verified}


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags as Linux lists them (empty where there is no /proc/cpuinfo). torch's own
    get_cpu_capability() says only "AVX512", not whether bfloat16 instructions are there."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def resolve_dtype(asked: str, device: torch.device, flags: set[str] | None = None) -> DtypeChoice:
    """The dtype a run on ``device`` computes in. "auto": bfloat16 on a CPU with AMX-BF16 or AVX512-BF16
    (``flags``, default: cpu_flags()), bfloat16 on a CUDA GPU that supports it, else float16 there, float16
    on Apple's MPS, float32 elsewhere. An explicit dtype is kept; float16 on a CPU is an InputError."""
    if asked not in DTYPE_CHOICES:
        raise InputError(f"dtype {asked!r} is not one of: {', '.join(DTYPE_CHOICES)}")
    if asked != "auto":
        if device.type == "cpu" and asked == "float16":
            raise InputError("dtype = 'float16' needs a GPU; on the CPU use float32, bfloat16 or auto")
        return DtypeChoice(asked, asked, "asked for")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if torch.cuda.is_bf16_supported():
            return DtypeChoice(asked, "bfloat16", f"CUDA GPU with bfloat16 ({name})")
        return DtypeChoice(asked, "float16", f"CUDA GPU without bfloat16 ({name})")
    if device.type == "mps":
        return DtypeChoice(asked, "float16", "Apple GPU (MPS)")
    found = cpu_flags() if flags is None else flags
    for flag, name in CPU_BF16_FLAGS.items():
        if flag in found:
            return DtypeChoice(asked, "bfloat16", f"CPU with {name}")
    return DtypeChoice(asked, "float32", "CPU without AMX-BF16 or AVX512-BF16: bfloat16 would not be faster")
