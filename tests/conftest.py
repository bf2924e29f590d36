"""Fixtures every tier shares: a tiny random CLIP saved to disk (and one built in memory for the unit tier),
tiny COCO-format datasets, the stores the dashboard, SigLIP and Heads tests read; and CI's rule that a
browser, Ray or root-only test never skips (its hooks are in helpers.py, with the plain helpers: paths, SQL,
the command line).

Tiers (``make test`` runs them all; ``make test-fast`` only the first):
    unit/         pure functions and tiny in-memory inputs, seconds in all
    integration/  tiny random models built and saved here, real DuckDB files, the command line, AppTest
    regression/   the shipped demo models against stored reference numbers
    browser/      a real Streamlit server driven by a real headless Chromium
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import pytest

# OpenMP reads its wait policy once, when torch loads: compute sets it (compute/__init__.py), so compute comes
# first. Without it torch's threads spin between ops and an in-process run is 4-8x slower beside its own
# decode workers.
assert "torch" not in sys.modules, "torch was imported before conftest.py could set OpenMP's wait policy"
import compute  # noqa: E402, F401, I001

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config: pytest.Config) -> None:
    """torch's threads in this pytest process and the interpreters its tests start (OMP_NUM_THREADS): its share
    of the cores (make test: two xdist workers on two cores, one thread each). Two workers of two threads on two
    cores ran the tiny models' ops slower and at more CPU (the demo regression alone: 26.5 s and 31 CPU-s on
    two threads, 19-23 s and 20-24 CPU-s on one). Float sums can end in other bits on another thread count: a
    test that compares bits across processes gives them the same.

    Here, not at import: the process that starts the xdist workers passes them its environment, so it must
    count them (``-n``) rather than take all the cores as its own (it did, and each worker ran two threads)."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")  # set in an xdist worker
    starts = None if workers else len(config.getoption("tx", default=None) or ())
    # the cores this process may run on, counted as compute.loader.default_workers does (its module imports torch)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    share = max(1, cores // int(workers or starts or 1))
    given = os.environ.get("OMP_NUM_THREADS", "")
    if not (given.isdigit() and int(given) > 0):  # unset, empty or nonsense: the share
        os.environ["OMP_NUM_THREADS"] = str(share)
    if not starts:  # a process that runs tests (the one that starts workers runs none: it spares torch's import)
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


# CI's rule (a skipped browser, Ray or root test fails): hooks kept in helpers.py, so that a probe can load
# them alone (tests/integration/test_ci_rule.py), registered here by name.
from helpers import (  # noqa: E402, F401
    HEADS_EXTRAS,
    ONE_WORKER,
    SIGLIP_EXTRAS,
    pytest_make_collect_report,
    pytest_runtest_makereport,
)


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: unknown without it (-p no:xdist)
def pytest_xdist_make_scheduler(config, log):
    """`make test`'s --dist loadgroup: a test of helpers.ONE_WORKER's modules (dear module fixtures) travels
    with its module, so one worker makes them once; any other test goes alone to whichever worker is free.
    (pytest-xdist's own ``xdist_group`` marks group nothing under pytest 9: they rename node ids the way
    pytest 8 stored them.)"""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleOrTest(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if Path(module).name in ONE_WORKER else nodeid

    return ModuleOrTest(config, log)


@pytest.fixture(autouse=True)
def _one_component_scan() -> None:
    """Streamlit reads every installed package's metadata for custom components whenever an AppTest starts
    (0.2 s of CPU each, some 200 times a session; a real server does it once, at its start). The packages do not
    change during a session: after the first scan in a worker, the others reuse its answer."""
    scanner = sys.modules.get("streamlit.components.v2.manifest_scanner")  # imported by the first AppTest run
    if scanner is not None and not hasattr(scanner.scan_component_manifests, "cache_info"):
        scanner.scan_component_manifests = functools.cache(scanner.scan_component_manifests)


@pytest.fixture(autouse=True)
def _freeze_imports() -> None:
    """Before a test, when modules were imported since the last time: collect garbage, then freeze what is left
    (modules, session and module fixtures) out of the collector's sight, as the dashboard's server does before a
    script run (dashboard/server.py). With torch and transformers imported a full collection walks some 450,000
    objects (0.25 s); frozen, the test's own collections walk what the test made, and a test's forked process
    (cli_forked, start_cli) does not copy every page of the heap as its collector walks it."""
    from dashboard.server import freeze_new_imports

    freeze_new_imports()


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    """A 12-layer random CLIP (width 32, 32 px, patch 8: 17 tokens) in the save_pretrained layout."""
    from tools.synthetic import save_random_clip

    return save_random_clip(tmp_path_factory.mktemp("models") / "tiny-clip", layers=12, width=32, heads=4)


@pytest.fixture
def clip_in_memory():
    """tiny_clip's vision tower (12 layers, width 32, 4 heads, 32 px, patch 8: 17 tokens) with random weights, built
    in memory and never saved: the unit tier's model."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        vision_config=dict(hidden_size=32, intermediate_size=128, num_hidden_layers=12, num_attention_heads=4,
                           image_size=32, patch_size=8, hidden_act="quick_gelu"),
        text_config=dict(hidden_size=32, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=64, max_position_embeddings=32),
        projection_dim=16)
    return CLIPModel(config).eval()


@pytest.fixture(scope="session")
def tiny_siglip(tmp_path_factory) -> Path:
    """A 6-layer random SiglipModel (width 32, 4 heads, 32 px, patch 8: 16 tokens, no CLS; perturbed so the
    logit bias, biases and norms are far from their initial values) in the save_pretrained layout."""
    from tools.synthetic_siglip import save_random_siglip

    return save_random_siglip(tmp_path_factory.mktemp("models") / "tiny-siglip")


@pytest.fixture(scope="session")
def tiny_siglip2(tmp_path_factory) -> Path:
    """A 6-layer random Siglip2Model (NaFlex; native grid 4 x 4 patches of 8 px) with its Siglip2Processor."""
    from tools.synthetic_siglip import save_random_siglip2

    return save_random_siglip2(tmp_path_factory.mktemp("models") / "tiny-siglip2")


@pytest.fixture(scope="session")
def tiny_openclip(tmp_path_factory) -> Path:
    """A CLIPModel shaped as OpenCLIP's published ones: exact GELU, 6 layers of width 48 with 6 heads, 10 tokens."""
    from tools.synthetic import save_openclip_shaped_clip

    return save_openclip_shaped_clip(tmp_path_factory.mktemp("models") / "tiny-openclip")


@pytest.fixture(scope="session")
def tiny_blip(tmp_path_factory) -> Path:
    """A tiny random BLIP conditional captioner with its processor."""
    from tools.synthetic import save_random_blip

    return save_random_blip(tmp_path_factory.mktemp("models") / "tiny-blip")


@pytest.fixture(scope="session")
def tiny_ved(tmp_path_factory) -> Path:
    """A tiny random VisionEncoderDecoderModel (ViT + GPT-2) captioner with its tokenizer."""
    from tools.synthetic import save_random_vision_encoder_decoder

    return save_random_vision_encoder_decoder(tmp_path_factory.mktemp("models") / "tiny-ved")


@pytest.fixture
def tiny_coco(tmp_path) -> Path:
    """10 small JPEGs of cats and dogs (see tools.synthetic.make_coco)."""
    from tools.synthetic import make_coco

    return make_coco(tmp_path / "coco")


@pytest.fixture(scope="session")
def dash_store(tiny_clip, tiny_blip, tmp_path_factory) -> Path:
    """The dashboard tests' store: 10 tiny COCO images (one unreadable), run "tiny" (the paper sweep plus
    zero:5-8, with BLIP captions) and run "tiny-singles" (the single layers, no captioner)."""
    from compute.config import load_experiment
    from compute.runner import run
    from tools.synthetic import make_coco, write_experiment

    tmp = tmp_path_factory.mktemp("dashboard-store")
    db = tmp / "dash.duckdb"
    coco = make_coco(tmp / "coco", n=10, broken=(4,))
    tiny = write_experiment(tmp / "tiny.toml", tiny_clip, coco, db, name="tiny", extra=("zero:5-8",),
                            captioner=tiny_blip)
    singles = write_experiment(tmp / "singles.toml", tiny_clip, coco, db, name="tiny-singles", sweep="singles")
    for exp in (tiny, singles):
        run(load_experiment(exp), progress=False, echo=lambda _: None)
    return db


@pytest.fixture(scope="session")
def siglip_store(tiny_siglip, tiny_blip, tmp_path_factory) -> Path:
    """A store made on the tiny SigLIP: run "sig" (the paper and flow sweeps of its 6 layers plus SIGLIP_EXTRAS
    over 8 tiny COCO images, BLIP captions) and run "sig-new", its rescore with other prompts."""
    from compute.config import load_experiment
    from compute.prompts import Prompt
    from compute.rescore import rescore
    from compute.runner import run
    from tools.synthetic import experiment_text, make_coco

    tmp = tmp_path_factory.mktemp("siglip-store")
    db = tmp / "siglip.duckdb"
    coco = make_coco(tmp / "coco", n=8)
    text = experiment_text(tiny_siglip, coco, db, name="sig", extra=SIGLIP_EXTRAS, captioner=tiny_blip)
    (tmp / "sig.toml").write_text(text.replace('sweep = "paper"', 'sweep = ["paper", "flow"]'))
    run(load_experiment(tmp / "sig.toml"), progress=False, echo=lambda _: None)
    prompts = [Prompt("a photo of the dog", "dog"), Prompt("a small cat", "cat")]
    rescore(db, "sig", prompts, "sig-new", progress=False, echo=lambda _: None)
    return db


@pytest.fixture(scope="session")
def heads_store(tiny_clip, tmp_path_factory) -> Path:
    """The Heads and Flow pages' store: run "tiny-heads", the heads and flow sweeps of the tiny CLIP (12
    layers x 4 heads) plus HEADS_EXTRAS over 8 tiny COCO images."""
    from compute.config import load_experiment
    from compute.runner import run
    from tools.synthetic import experiment_text, make_coco

    tmp = tmp_path_factory.mktemp("heads-store")
    db = tmp / "heads.duckdb"
    coco = make_coco(tmp / "coco", n=8)
    text = experiment_text(tiny_clip, coco, db, name="tiny-heads", extra=HEADS_EXTRAS)
    (tmp / "heads.toml").write_text(text.replace('sweep = "paper"', 'sweep = ["heads", "flow"]'))
    run(load_experiment(tmp / "heads.toml"), progress=False, echo=lambda _: None)
    return db
