"""``make bench``: speed as ratios against a reference measured in the same run, never as absolute targets.

Sections (``--only`` picks some; ``python -m tools.bench gpu [--smoke]`` runs the GPU bench, which
``make bench`` leaves out):
  sweep    the paper sweep on a random CLIP shaped like ViT-B/16 (12 layers, width 768, 12 heads, 224 px,
           patch 16), 32 images, 4 prompts, batch 32, timed as whole processes: the engine against the plain
           method (patch the modules, rerun the whole model per ablation, same batch size); peak memory of
           the engine at 64 and 128 images.
  heads    the heads sweep (145 ablations: identity on every head of every layer) on the same ViT-B/16-shaped
           CLIP, 8 images, batch 8, engine against plain as whole processes, with the layer evaluations
           each spends per batch.
  siglip   the paper sweep on a random SigLIP shaped like google/siglip-base-patch16-224 (12 layers, width
           768, 12 heads, 224 px, patch 16: 196 tokens, no CLS; attention-pooling head), 32 images, 4 prompts
           padded to 64 tokens, batch 32, engine against plain as whole processes. No CLS-only shortcut is
           exact there: prefix sharing saves vision layers (252/143), and the plain method also reruns the
           text tower per ablation.
  rescore  4 new prompts scored from that run's stored embeddings, against the full run it replaces.
  captions the caption stage on the demo sweep against per-(image, ablation) generation.
  dashboard page render times on a generated 5,000 x 21 x 80 store (AppTest).
  pipeline the run's loop (decode workers, engine, store writer) against bare decoding on one thread.
  busy     the engine beside two spinning processes against its quiet rate.
  ray      the paper sweep on the ViT-B/16-shaped CLIP, 24 images, batch 8, as whole processes: ``run --ray``
           on a local Ray of this machine's cores against the single-process run (its default threads, and
           one thread: a CPU actor's share) on the same images; the whole process and the sweep (which on
           Ray includes starting the actor: Ray's own start is outside it).
  precision float32 against bfloat16 with float32 verification (compute.precision), whole processes
           (``run --dtype``), on the ViT-B/16-shaped CLIP: the paper sweep on 64 images (batch 32) and the heads
           sweep on 16 (batch 8); the pairs verified in float32, and the selections compared pair by pair
           (they must be identical: the section fails otherwise). ``--smoke``: 16 and 3 images, to check the
           section itself.
  attribution the attribution pass ([attribution] kinds = ["identity"] beside the baseline: one forward and one
           backward pass per image, every head of every layer estimated) against the exact heads sweep (145
           ablations, the engine) on the same ViT-B/16-shaped CLIP and the same 16 images, batch 8, whole
           processes; target: at least 10x faster. ``--smoke``: 2 images, to check the section itself.
  store    opening a store and one query, as the dashboard's script runs and a run's writer sessions do: the
           store attached to the process's DuckDB (compute.storefile) against a DuckDB of its own per open
           (duckdb.connect, how the store was opened before), CPU per open, read-only and for writing.
  gpu      the ViT-B/16-shaped model on 5,000 JPEGs on a CUDA GPU (tools/gpu_bench.py; not in make bench).

Long because each section is one measured comparison with its own setup and printout; they share the
model builders and the process timer here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tools import synthetic as testing
from tools.dashboard_perf import bench_dashboard
from tools.gpu_bench import bench_gpu, stored_picks
from tools.pipeline_perf import bench_busy, bench_pipeline
from tools.synthetic import make_coco, save_vit_b16_shaped_clip
from tools.synthetic_siglip import save_siglip_b16_shaped

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Timing:
    seconds: float
    peak_rss_mb: float
    returncode: int
    stderr: str


def run_process(args: list[str]) -> Timing:
    """Run ``python -m compute ARGS`` and return its wall time and peak resident memory."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "compute", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    stderr = proc.stderr.read() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Timing(seconds, usage.ru_maxrss / 1024, proc.returncode, stderr)


def make_images(folder: Path, n: int, size: int = 256) -> Path:
    """``n`` JPEGs of random pixels (large and slow to decode, like photos) in a COCO-format dataset."""
    return make_coco(folder, n, size=(size, size), noise=True)


def write_experiment(path: Path, name: str, model: Path, data: Path, db: Path, batch_size: int,
                     sweep: str = "paper") -> Path:
    return testing.write_experiment(path, model, data, db, name=name, batch_size=batch_size, categories=(),
                                    sweep=sweep)


def bench_sweep(tmp: Path, images: int = 32, batch_size: int = 32) -> dict[str, float]:
    print(f"\n== sweep: paper sweep (21 ablations), ViT-B/16-shaped random CLIP, {images} images, 4 prompts, "
          f"batch {batch_size}, whole processes ==", flush=True)
    model = save_vit_b16_shaped_clip(tmp / "vit-b16")
    data = make_images(tmp / "data", 4 * images)
    results = {}
    # Speed: plain and engine on the same images. Memory: the engine at 2 and 4 batches, both past the
    # first batch (from the second on, the next batch is decoded while the current one computes).
    for method, n in (("plain", images), ("engine", images), ("engine", 2 * images), ("engine", 4 * images)):
        exp = write_experiment(tmp / f"{method}{n}.toml", f"bench-{method}-{n}", model, data,
                               tmp / f"{method}{n}.duckdb", batch_size)
        t = run_process(["run", str(exp), "--method", method, "--limit", str(n), "--no-progress"])
        if t.returncode != 0:
            raise SystemExit(f"bench run failed ({method}, {n} images):\n{t.stderr[-2000:]}")
        results[f"{method}_{n}_s"] = t.seconds
        results[f"{method}_{n}_rss_mb"] = t.peak_rss_mb
        print(f"  {method:<7} {n:>3} images  {t.seconds:7.1f} s  {n / t.seconds:5.2f} img/s  "
              f"peak RSS {t.peak_rss_mb:6.0f} MB", flush=True)
    ratio = results[f"plain_{images}_s"] / results[f"engine_{images}_s"]
    results["speedup"] = ratio
    print(f"  engine speed-up over the plain method: {ratio:.2f}x (layer-evaluation bound 252/143 = 1.76x; "
          f"CLS-only tails go past it)")
    print(f"  engine peak RSS {results[f'engine_{2 * images}_rss_mb']:.0f} MB at {2 * images} images, "
          f"{results[f'engine_{4 * images}_rss_mb']:.0f} MB at {4 * images}: bounded by the batch, not the dataset")
    return results


def bench_heads(tmp: Path, images: int = 8, batch_size: int = 8) -> dict[str, float]:
    """The heads sweep through the engine against the plain method, as whole processes, on the same images."""
    from compute.ablations import sweep
    from compute.engine import build_tree, count_nodes

    ablations = sweep("heads", 12, 12)
    tree = build_tree(ablations, 12)
    engine_layers, plain_layers = count_nodes(tree), len(ablations) * 12
    cls_only = _count_cls_only(tree)
    print(f"\n== heads: heads sweep ({len(ablations)} ablations), ViT-B/16-shaped random CLIP, {images} images, "
          f"4 prompts, batch {batch_size}, whole processes ==", flush=True)
    print(f"  layer evaluations per batch: plain {plain_layers:,} (every ablation reruns 12 layers), engine "
          f"{engine_layers:,} ({cls_only} of them on the CLS token alone) -> bound {plain_layers / engine_layers:.2f}x")
    model = save_vit_b16_shaped_clip(tmp / "vit-b16")
    data = make_images(tmp / "data", images)
    results: dict[str, float] = {"ablations": len(ablations), "plain_layer_evaluations": plain_layers,
                                 "engine_layer_evaluations": engine_layers, "engine_cls_only_evaluations": cls_only}
    for method in ("plain", "engine"):
        exp = write_experiment(tmp / f"{method}.toml", f"heads-{method}", model, data, tmp / f"{method}.duckdb",
                               batch_size, sweep="heads")
        t = run_process(["run", str(exp), "--method", method, "--limit", str(images), "--no-progress"])
        if t.returncode != 0:
            raise SystemExit(f"bench run failed ({method}, heads sweep):\n{t.stderr[-2000:]}")
        results[f"{method}_s"] = t.seconds
        results[f"{method}_rss_mb"] = t.peak_rss_mb
        print(f"  {method:<7} {images:>3} images  {t.seconds:7.1f} s  {images / t.seconds:5.2f} img/s  "
              f"peak RSS {t.peak_rss_mb:6.0f} MB", flush=True)
    results["speedup"] = results["plain_s"] / results["engine_s"]
    print(f"  engine speed-up over the plain method: {results['speedup']:.2f}x (target: at least 1.6x)")
    return results


def bench_siglip(tmp: Path, images: int = 32, batch_size: int = 32) -> dict[str, float]:
    """The paper sweep through the engine against the plain method on a SigLIP-B/16-shaped model, as whole
    processes on the same images."""
    from compute.ablations import sweep
    from compute.engine import build_tree, count_nodes

    ablations = sweep("paper", 12)
    engine_layers, plain_layers = count_nodes(build_tree(ablations, 12, cls=False)), len(ablations) * 12
    print(f"\n== siglip: paper sweep ({len(ablations)} ablations), SigLIP-B/16-shaped random SigLIP (196 tokens, no "
          f"CLS), {images} images, 4 prompts, batch {batch_size}, whole processes ==", flush=True)
    print(f"  layer evaluations per batch: plain {plain_layers} (every ablation reruns 12 layers), engine "
          f"{engine_layers}, every one on all 196 tokens -> bound {plain_layers / engine_layers:.2f}x")
    model = save_siglip_b16_shaped(tmp / "siglip-b16")
    data = make_images(tmp / "data", images)
    results: dict[str, float] = {"ablations": len(ablations), "plain_layer_evaluations": plain_layers,
                                 "engine_layer_evaluations": engine_layers}
    for method in ("plain", "engine"):
        exp = write_experiment(tmp / f"{method}.toml", f"siglip-{method}", model, data, tmp / f"{method}.duckdb",
                               batch_size)
        t = run_process(["run", str(exp), "--method", method, "--limit", str(images), "--no-progress"])
        if t.returncode != 0:
            raise SystemExit(f"bench run failed ({method}, SigLIP paper sweep):\n{t.stderr[-2000:]}")
        results[f"{method}_s"] = t.seconds
        results[f"{method}_rss_mb"] = t.peak_rss_mb
        print(f"  {method:<7} {images:>3} images  {t.seconds:7.1f} s  {images / t.seconds:5.2f} img/s  "
              f"peak RSS {t.peak_rss_mb:6.0f} MB", flush=True)
    results["speedup"] = results["plain_s"] / results["engine_s"]
    print(f"  engine speed-up over the plain method: {results['speedup']:.2f}x (vision layer-evaluation bound "
          f"{plain_layers / engine_layers:.2f}x; the plain method also reruns the text tower on the 4 prompts "
          f"padded to 64 tokens for every ablation, the engine once per run)")
    return results


def _count_cls_only(node) -> int:
    return sum((not child.full_out) + _count_cls_only(child) for child in node.children.values())


# Words the random model's tokenizer knows: unknown ones ("puppy", "kitten") would all be the same prompt to it,
# which rescore refuses (they would always tie).
NEW_PROMPTS = [("a photo of a small dog", "dog"), ("a photo of a black cat", "cat"), ("a photo of a white bird", "bird"),
               ("a photo of a red car", "car")]


def bench_rescore(tmp: Path, images: int = 32) -> dict[str, float]:
    """rescore against the full run it replaces, on the ViT-B/16-shaped bench run."""
    from compute.config import load_experiment
    from compute.models import load_clip
    from compute.prompts import Prompt
    from compute.rescore import rescore
    from compute.runner import run

    print(f"\n== rescore: 4 new prompts on the ViT-B/16-shaped paper-sweep run ({images} images) ==", flush=True)
    model = save_vit_b16_shaped_clip(tmp / "vit-b16")
    data = make_images(tmp / "data", images)
    db = tmp / "r.duckdb"
    exp_path = write_experiment(tmp / "full.toml", "full", model, data, db, batch_size=32)
    quiet = lambda _: None  # noqa: E731
    clip = load_clip(str(model), "cpu")
    start = time.perf_counter()
    run(load_experiment(exp_path), progress=False, echo=quiet, clip=clip)
    full_s = time.perf_counter() - start
    prompts = [Prompt(t, label) for t, label in NEW_PROMPTS]
    start = time.perf_counter()
    rescore(db, "full", prompts, "rescored", progress=False, echo=quiet, clip=clip)
    rescore_s = time.perf_counter() - start
    # Both again as whole processes (imports and model loading included), for the user's view.
    new_prompts = tmp / "new.toml"
    new_prompts.write_text("".join(f'[[prompts]]\ntext = "{t}"\nlabel = "{lab}"\n' for t, lab in NEW_PROMPTS))
    proc = run_process(["rescore", "--run", "full", "--prompts", str(new_prompts), "--as", "rescored-process",
                        "--db", str(db), "--no-progress"])
    full_proc = run_process(["run", str(write_experiment(tmp / "full2.toml", "full2", model, data, db, 32)),
                             "--no-progress"])
    results = {"full_run_s": full_s, "rescore_s": rescore_s, "speedup": full_s / rescore_s,
               "full_run_process_s": full_proc.seconds, "rescore_process_s": proc.seconds,
               "speedup_process": full_proc.seconds / proc.seconds}
    print(f"  model loaded once: full run {full_s:6.1f} s, rescore {rescore_s:6.2f} s -> {full_s / rescore_s:6.0f}x")
    print(f"  whole processes:   full run {full_proc.seconds:6.1f} s, rescore {proc.seconds:6.2f} s -> "
          f"{full_proc.seconds / proc.seconds:6.1f}x (imports and loading a 600 MB model dominate rescore)")
    return results


def bench_captions(tmp: Path, images: int = 100) -> dict[str, float]:
    """The caption stage (one generation per distinct (image, prefix), batched by prefix) against
    generating for every (image, ablation) one by one, on the demo sweep with the shipped toy models."""
    from compute import store
    from compute.captions import caption_stage, continue_prefix
    from compute.config import load_experiment
    from compute.dataset import open_image
    from compute.demo import EXPERIMENTS, SEED, SPLIT
    from compute.demo.data import write_coco
    from compute.models import load_captioner, load_clip
    from compute.runner import run

    print(f"\n== captions: demo-shapes sweep ({images} images, 24 ablations), shipped toy CLIP and captioner ==",
          flush=True)
    write_coco(tmp / "shapes", SPLIT, images, SEED)
    exp = load_experiment(EXPERIMENTS[0])
    exp.dataset.images, exp.dataset.limit = tmp / "shapes" / SPLIT, images
    exp.dataset.annotations = tmp / "shapes" / "annotations" / exp.dataset.annotations.name
    exp.store.db, exp.model.device, captioner_ref = tmp / "c.duckdb", "cpu", exp.model.captioner
    key = store.caption_key(json.loads(exp.to_json()))  # the captioner's, before the sweep leaves it out
    exp.model.captioner = "none"  # sweep first; the caption stage is timed on its own below
    clip = load_clip(exp.model.clip, "cpu")
    run_id = run(exp, progress=False, echo=lambda _: None, clip=clip).run_id
    cap = load_captioner(captioner_ref, "cpu")
    with store.connect(exp.store.db, read_only=True) as con:
        pairs = store.selected_prompts(con, run_id)
    start = time.perf_counter()
    stats = caption_stage(exp.store.db, run_id, clip, cap, exp.captions, key,
                          exp.store.embeddings, progress=False)
    stage_s = time.perf_counter() - start
    start = time.perf_counter()
    for path, prompt in pairs:  # the notebook way: one generate per (image, ablation)
        continue_prefix(cap, [open_image(Path(path))], prompt, exp.captions.max_new_tokens, exp.captions.num_beams)
    naive_s = time.perf_counter() - start
    results = {"pairs": len(pairs), "generated": stats.generated, "generate_calls": stats.generate_calls,
               "stage_s": stage_s, "per_pair_s": naive_s, "speedup": naive_s / stage_s}
    print(f"  (image, ablation) pairs {len(pairs)}; captions generated {stats.generated} "
          f"({len(pairs) / stats.generated:.1f}x fewer) in {stats.generate_calls} batched calls")
    print(f"  caption stage {stage_s:6.1f} s (scoring included) vs per-pair generation {naive_s:6.1f} s "
          f"-> {naive_s / stage_s:.1f}x")
    return results


SWEPT = re.compile(r"swept (\d+) images in ([\d.]+) s: .*\(setup ([\d.]+) s, first batch after ([\d.]+) s")


def bench_ray(tmp: Path, images: int = 24, batch_size: int = 8) -> dict[str, float]:
    """run --ray on a local Ray against the single-process run, same experiment and images, whole processes."""
    from compute.loader import default_workers

    print(f"\n== ray: paper sweep (21 ablations), ViT-B/16-shaped random CLIP, {images} images, batch {batch_size}, "
          f"local Ray of {default_workers()} CPUs (1 actor, 1 CPU) against one process, whole processes ==", flush=True)
    print(f"  load average before: {os.getloadavg()[0]:.2f}", flush=True)
    model = save_vit_b16_shaped_clip(tmp / "vit-b16")
    data = make_images(tmp / "data", images)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    results: dict[str, float] = {}
    for name, more in (("single", []), ("single_1_thread", ["--threads", "1"]), ("ray", ["--ray"])):
        exp = write_experiment(tmp / f"{name}.toml", f"ray-bench-{name}", model, data, tmp / f"{name}.duckdb",
                               batch_size)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "compute", "run", str(exp), "--no-progress", *more], cwd=ROOT,
                              env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        found = SWEPT.search(proc.stdout)
        if proc.returncode != 0 or found is None:
            raise SystemExit(f"bench run failed ({name}):\n{proc.stderr[-2000:]}")
        sweep_s, setup_s, first_s = float(found[2]), float(found[3]), float(found[4])
        # setup: imports aside, the dataset and model checked; the rest outside the sweep is imports, the mean
        # pass (none here), Ray's start and stop (--ray) and the summary
        results |= {f"{name}_s": seconds, f"{name}_sweep_s": sweep_s, f"{name}_setup_s": setup_s,
                    f"{name}_first_batch_s": first_s}
        print(f"  {name:<16} whole process {seconds:6.1f} s: sweep {sweep_s:6.1f} s (first batch after "
              f"{first_s:5.1f} s), setup {setup_s:4.1f} s, the rest {seconds - sweep_s - setup_s:5.1f} s", flush=True)
    for ref in ("single", "single_1_thread"):
        results[f"whole_ratio_{ref}"] = results["ray_s"] / results[f"{ref}_s"]
        results[f"sweep_ratio_{ref}"] = results["ray_sweep_s"] / results[f"{ref}_sweep_s"]
    print(f"  --ray takes {results['whole_ratio_single']:.2f}x the single-process run's time as a whole process "
          f"({results['sweep_ratio_single']:.2f}x in the sweep); against one thread, a CPU actor's share: "
          f"{results['whole_ratio_single_1_thread']:.2f}x ({results['sweep_ratio_single_1_thread']:.2f}x)")
    print(f"  load average after: {os.getloadavg()[0]:.2f}", flush=True)
    return results


def bench_precision(tmp: Path, smoke: bool = False) -> dict[str, float]:
    """float32 against bfloat16 + verification as whole processes, the same experiment and images, paper and
    heads sweeps on the ViT-B/16-shaped CLIP; the selections of the two runs compared pair by pair."""
    from compute import store

    plan = [("paper", 16, 16), ("heads", 3, 3)] if smoke else [("paper", 64, 32), ("heads", 16, 8)]
    print(f"\n== precision: float32 against bfloat16 with float32 verification, ViT-B/16-shaped random CLIP, "
          f"4 prompts, whole processes (run --dtype){' (smoke)' if smoke else ''} ==", flush=True)
    print(f"  load average before: {os.getloadavg()[0]:.2f}", flush=True)
    model = save_vit_b16_shaped_clip(tmp / "vit-b16")
    data = make_images(tmp / "data", max(n for _, n, _ in plan))
    results: dict[str, float] = {}
    for sweep_name, images, batch_size in plan:
        picks = {}
        for dtype in ("float32", "bfloat16"):
            name = f"precision-{sweep_name}-{dtype}"
            db = tmp / f"{name}.duckdb"
            exp = write_experiment(tmp / f"{name}.toml", name, model, data, db, batch_size, sweep=sweep_name)
            t = run_process(["run", str(exp), "--dtype", dtype, "--limit", str(images), "--no-progress"])
            if t.returncode != 0:
                raise SystemExit(f"bench run failed ({sweep_name}, {dtype}):\n{t.stderr[-2000:]}")
            picks[dtype], counts = stored_picks(db, name)
            results[f"{sweep_name}_{dtype}_s"] = t.seconds
            results[f"{sweep_name}_{dtype}_rss_mb"] = t.peak_rss_mb
            line = f"  {sweep_name:<6} {dtype:<9} {images:>3} images  {t.seconds:7.1f} s  peak RSS {t.peak_rss_mb:6.0f} MB"
            if dtype != "float32":
                pairs = sum(counts.values())
                for reason in store.VERIFIED[1:]:
                    results[f"{sweep_name}_verified_{reason}"] = counts.get(reason, 0)
                verified = pairs - counts.get(None, 0)
                results[f"{sweep_name}_pairs"], results[f"{sweep_name}_verified_fraction"] = pairs, verified / pairs
                line += (f"  verified in float32: {verified:,} of {pairs:,} pairs ({verified / pairs:.1%}: "
                         + ", ".join(f"{counts.get(r, 0):,} {r}" for r in store.VERIFIED[1:]) + ")")
            print(line, flush=True)
        differ = sum(a != b for a, b in zip(picks["float32"], picks["bfloat16"], strict=True))
        ratio = results[f"{sweep_name}_float32_s"] / results[f"{sweep_name}_bfloat16_s"]
        results[f"{sweep_name}_speedup"], results[f"{sweep_name}_selections_differing"] = ratio, differ
        print(f"  {sweep_name}: bfloat16 + verification {ratio:.2f}x faster than float32; selections compared pair by "
              f"pair: {len(picks['float32']) - differ:,} of {len(picks['float32']):,} identical", flush=True)
        if differ:
            raise SystemExit(f"precision: {differ} selection(s) of the bfloat16 run differ from float32's")
    print(f"  load average after: {os.getloadavg()[0]:.2f}", flush=True)
    return results


def bench_attribution(tmp: Path, smoke: bool = False) -> dict[str, float]:
    """The attribution pass against the exact heads sweep, as whole processes on the same images."""
    images = 2 if smoke else 16
    print(f"\n== attribution: every head estimated (identity; one forward and one backward pass per image) against "
          f"the exact heads sweep (145 ablations), ViT-B/16-shaped random CLIP, {images} images, 4 prompts, batch 8, "
          f"whole processes{' (smoke)' if smoke else ''} ==", flush=True)
    print(f"  load average before: {os.getloadavg()[0]:.2f}", flush=True)
    model = save_vit_b16_shaped_clip(tmp / "vit-b16")
    data = make_images(tmp / "data", images)
    runs = {"attribution": ("none", '[attribution]\nkinds = ["identity"]\n'), "exact": ("heads", "")}
    results: dict[str, float] = {"images": images}
    for name, (sweep_name, more) in runs.items():
        exp = testing.write_experiment(tmp / f"{name}.toml", model, data, tmp / f"{name}.duckdb", name=f"bench-{name}",
                                       batch_size=8, categories=(), sweep=sweep_name, more=more)
        t = run_process(["run", str(exp), "--limit", str(images), "--no-progress"])
        if t.returncode != 0:
            raise SystemExit(f"bench run failed ({name}):\n{t.stderr[-2000:]}")
        results[f"{name}_s"], results[f"{name}_rss_mb"] = t.seconds, t.peak_rss_mb
        what = "baseline + every head estimated" if name == "attribution" else "heads sweep, every head exactly"
        print(f"  {name:<12} {images:>3} images  {t.seconds:7.1f} s  peak RSS {t.peak_rss_mb:6.0f} MB  ({what})",
              flush=True)
    results["speedup"] = results["exact_s"] / results["attribution_s"]
    print(f"  attribution {results['speedup']:.1f}x faster than the exact heads sweep as whole processes (target: "
          f"at least 10x; imports and loading the model are in both)")
    print(f"  load average after: {os.getloadavg()[0]:.2f}", flush=True)
    return results


def bench_store(tmp: Path, opens: int = 200) -> dict[str, float]:
    """CPU per open of a store (with one query) through compute.store against duckdb.connect per open."""
    import duckdb

    from compute import store

    print(f"\n== store: {opens} opens of a store, each with one query ==", flush=True)
    db = tmp / "s.duckdb"
    with store.connect(db):  # the store's schema in a new file
        pass
    query = "SELECT COUNT(*) FROM runs"

    def cpu_ms(open_once) -> float:
        start = time.process_time()
        for _ in range(opens):
            open_once()
        return (time.process_time() - start) / opens * 1000

    def attached(read_only: bool) -> None:
        with store.connect(db, read_only=read_only) as con:
            con.execute(query).fetchall()

    def own(read_only: bool) -> None:
        with duckdb.connect(str(db), read_only=read_only) as con:
            con.execute(query).fetchall()

    results = {}
    for mode, read_only in (("read", True), ("write", False)):
        a, b = cpu_ms(lambda: attached(read_only)), cpu_ms(lambda: own(read_only))  # noqa: B023 (called at once)
        results |= {f"{mode}_attached_ms": a, f"{mode}_own_instance_ms": b, f"{mode}_ratio": a / b}
        print(f"  {mode:5s}: attached {a:5.1f} ms of CPU per open, a DuckDB of its own {b:5.1f} ms -> {a / b:4.2f}x")
    return results


SECTIONS = {"sweep": bench_sweep, "heads": bench_heads, "siglip": bench_siglip, "rescore": bench_rescore,
            "captions": bench_captions, "dashboard": bench_dashboard, "pipeline": bench_pipeline, "busy": bench_busy,
            "ray": bench_ray, "precision": bench_precision, "attribution": bench_attribution, "store": bench_store,
            "gpu": bench_gpu}
DEFAULT = [s for s in SECTIONS if s != "gpu"]  # make bench: what runs on this project's CPU machine
SMOKE = ("gpu", "precision", "attribution")  # the sections with a --smoke size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("section", nargs="?", choices=["gpu"], help="gpu: the GPU bench alone")
    parser.add_argument("--only", default=",".join(DEFAULT), help=f"comma list of sections ({', '.join(SECTIONS)})")
    parser.add_argument("--smoke", action="store_true", help="gpu: a tiny model and 64 images on any device; "
                        "precision: 16 and 3 images; attribution: 2 images; to check the bench itself (the other "
                        "sections have no smoke size: --smoke refuses them)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    chosen = [args.section] if args.section else [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section {unknown[0]!r}")
    full_only = [s for s in chosen if s not in SMOKE]
    if args.smoke and full_only:  # it would run them at full size, the opposite of what was asked
        parser.error(f"--smoke: {', '.join(full_only)} {'has' if len(full_only) == 1 else 'have'} no smoke size "
                     f"(only {', '.join(SMOKE)}): pick those with --only")
    from compute.__main__ import quiet_libraries

    quiet_libraries()
    figures = {}
    with tempfile.TemporaryDirectory(prefix="clip-lab-bench-") as tmp:
        for name in chosen:
            section = Path(tmp) / name
            section.mkdir()
            if name in SMOKE:
                figures[name] = SECTIONS[name](section, smoke=args.smoke)
            else:
                figures[name] = SECTIONS[name](section)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    from compute.__main__ import exit_now

    exit_now(main())  # without the interpreter's teardown of torch's objects (1-3 s here)
