"""Which dtype a run computes in (compute.devices.resolve_dtype, "auto" by faked CPU flags and GPUs), how a run
says it (the summary line, `list`'s cell), and that the default leaves every existing run's identity alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compute import devices
from compute.__main__ import dtype_cell
from compute.config import DTYPE_CHOICES, parse_experiment
from compute.devices import DtypeChoice, cpu_flags, resolve_dtype
from compute.errors import InputError
from compute.lifecycle import precision_line

CPU = torch.device("cpu")


@pytest.mark.parametrize(("flags", "used", "why"), [
    ({"fpu", "avx512f", "avx512_bf16"}, "bfloat16", "CPU with AVX512-BF16"),
    ({"avx512_bf16", "amx_bf16", "amx_tile"}, "bfloat16", "CPU with AMX-BF16"),
    ({"fpu", "avx2", "avx512f"}, "float32", "CPU without AMX-BF16 or AVX512-BF16: bfloat16 would not be faster"),
    (set(), "float32", "CPU without AMX-BF16 or AVX512-BF16: bfloat16 would not be faster"),
])
def test_auto_on_a_cpu_follows_its_flags(flags, used, why):
    assert resolve_dtype("auto", CPU, flags) == DtypeChoice("auto", used, why)
    assert resolve_dtype("auto", CPU, flags).verified == (used != "float32")


def test_auto_reads_the_flags_of_this_cpu_by_default(monkeypatch):
    monkeypatch.setattr(devices, "cpu_flags", lambda: {"amx_bf16"})
    assert resolve_dtype("auto", CPU).used == "bfloat16"
    monkeypatch.setattr(devices, "cpu_flags", lambda: set())
    assert resolve_dtype("auto", CPU).used == "float32"


@pytest.mark.parametrize(("bf16", "used"), [(True, "bfloat16"), (False, "float16")])
def test_auto_on_a_cuda_gpu_takes_bfloat16_where_it_is_supported(monkeypatch, bf16, used):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Some GPU")
    choice = resolve_dtype("auto", torch.device("cuda"))
    assert choice.used == used and "CUDA GPU" in choice.why and "Some GPU" in choice.why
    assert resolve_dtype("auto", torch.device("mps")).used == "float16"


def test_an_explicit_dtype_is_kept_and_float16_needs_a_gpu():
    for dtype in ("float32", "bfloat16"):
        assert resolve_dtype(dtype, CPU, {"amx_bf16"}) == DtypeChoice(dtype, dtype, "asked for")
    assert resolve_dtype("float16", torch.device("cuda")).used == "float16"
    with pytest.raises(InputError, match="float16' needs a GPU"):
        resolve_dtype("float16", CPU)
    with pytest.raises(InputError, match="not one of"):
        resolve_dtype("half", CPU)
    assert DTYPE_CHOICES == ("auto", "float32", "float16", "bfloat16")


def test_cpu_flags_come_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx512f avx512_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu sse2 avx512f avx512_bf16\n")
    assert cpu_flags(str(info)) == {"fpu", "sse2", "avx512f", "avx512_bf16"}
    assert cpu_flags(str(tmp_path / "absent")) == set()


BASE = {"name": "t", "model": {"clip": "/models/clip"}, "dataset": {"images": "/d/i", "annotations": "/d/a.json"},
        "prompts": [{"text": "a photo of a cat", "label": "cat"}], "store": {"db": "/d/s.duckdb"}}


def test_the_default_dtype_keeps_every_existing_runs_identity():
    """float32 stays the default and the identity's keys and hash are what they were before "auto" (pinned: the hash main computes for this experiment):
    a run made before resumes."""
    exp = parse_experiment(BASE, Path("/"))
    assert exp.model.dtype == "float32"
    assert set(exp.identity()) == {"clip", "captioner", "dtype", "dataset", "prompts", "ablations", "captions",
                                   "embeddings"}
    assert exp.identity_hash() == "ce63b74f852a7ade"
    auto = parse_experiment({**BASE, "model": {"clip": "/models/clip", "dtype": "auto"}}, Path("/"))
    assert auto.identity()["dtype"] == "auto" and auto.identity_hash() != exp.identity_hash()
    with pytest.raises(InputError, match="model.dtype = 'half' is not one of: auto, float32"):
        parse_experiment({**BASE, "model": {"clip": "/models/clip", "dtype": "half"}}, Path("/"))


def test_a_low_precision_run_says_what_it_computed_in_and_what_it_verified():
    record = {"asked": "auto", "used": "bfloat16", "why": "CPU with AVX512-BF16", "verified": True}
    line = precision_line({"dtype": record}, {None: 90, "baseline": 5, "sample": 4, "margin": 1})
    assert line == ("precision: bfloat16 (auto: CPU with AVX512-BF16), verified in float32: 10 of 100 pairs (10.0%) "
                    "hold float32 values (5 baseline, 4 sample, 1 margin)")
    assert precision_line({"dtype": {**record, "used": "float32"}}, {None: 100}) is None
    assert precision_line({"model": {"dtype": "float32"}}, {None: 100}) is None  # a run stored before "auto"
    assert "without verification" in precision_line({"dtype": record, "rescored_from": "r"}, {None: 100})
    assert dtype_cell("bfloat16", "auto") == "bfloat16 verified (auto)"
    assert dtype_cell("float32", "auto") == "float32 (auto)"
    assert dtype_cell("float32", None) == "float32"
