"""Attribution patching held to references written here, not the project's code: plain autograd with hooks on
the transformers model (the heads' outputs before out_proj captured by a pre-hook, M's gradient by
torch.autograd.grad) and each kind's changed head written out from DESIGN.md's words, on tiny random CLIP and
SigLIP models (perturbed, saved and reloaded) swept with [attribution] naming every kind and knockout target;
a finite-difference check in float64; z_A against compute.kinds.head_attention head by head; the run's prompt
pairs against its stored baseline selection."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import sql

from compute import store
from compute.ablations import Spec, parse_spec
from compute.attribution import Attributor
from compute.config import load_experiment
from compute.dataset import open_image
from compute.engine import attention_means
from compute.kinds import HEAD_MEAN_STAT, head_attention, kind_targets
from compute.models import load_clip, pixel_values
from compute.runner import run
from compute.scoring import LogitScale, text_embeddings
from compute.towers import image_inputs
from tools.synthetic import PROMPTS, make_coco, save_random_clip, write_experiment
from tools.synthetic_siglip import save_random_siglip

QUIET = {"progress": False, "echo": lambda _: None}
N_LAYERS = 4


def every_spec(cls: bool) -> list[str]:
    """Every registered kind, and every knockout target the tower takes."""
    return [f"{kind}:{target}" if target else kind for kind, target in kind_targets(cls)]


def attribution_table(cls: bool) -> str:
    kinds = ", ".join(f'"{s}"' for s in every_spec(cls))
    return f"[attribution]\nkinds = [{kinds}]\n"


def save_model(family: str, path: Path) -> Path:
    if family == "clip":
        return save_random_clip(path, layers=N_LAYERS, width=32, heads=4, perturb=0.2)
    return save_random_siglip(path, layers=N_LAYERS, width=32, heads=4, perturb=0.2)


@pytest.fixture(scope="module", params=["clip", "siglip"])
def attributed_run(request, tmp_path_factory):
    """(family, model path, store) of a run of 7 images (image 3 unreadable) in batches of 3, baseline only,
    with every kind and target attributed."""
    family = request.param
    tmp = tmp_path_factory.mktemp(f"attr-{family}")
    model = save_model(family, tmp / "model")
    coco = make_coco(tmp / "coco", n=7, broken=(3,))
    db = tmp / "a.duckdb"
    exp = write_experiment(tmp / "a.toml", model, coco, db, sweep="none", batch_size=3,
                           more=attribution_table(family == "clip"))
    assert run(load_experiment(exp), **QUIET).complete
    return family, model, db


# --------------------------------------------------------------------------------------------------
# The independent formulation.


def changed_head(attn, x: torch.Tensor, head: int, kind: str, target: str, cls: bool,
                 head_mean: torch.Tensor | None) -> torch.Tensor:
    """Head ``head``'s output before out_proj under the ablation, from DESIGN.md's words: x (batch, tokens, width)
    the layer's unablated layer-normed input -> (batch, tokens, head_dim)."""
    b, t, _ = x.shape
    hd = attn.head_dim
    sl = slice(head * hd, (head + 1) * hd)
    q = attn.q_proj(x)[..., sl]
    k = attn.k_proj(x)[..., sl]
    v = attn.v_proj(x)[..., sl]  # (batch, tokens, head_dim)
    if kind == "identity":  # its probabilities are the identity: its own value
        return v
    if kind == "zero":
        return torch.zeros_like(v)
    if kind == "mean":  # its output's dataset mean per position
        return head_mean[:, sl].to(v.dtype).expand(b, t, hd)
    if kind == "uniform":  # every token attends equally to all tokens
        return v.mean(dim=1, keepdim=True).expand(b, t, hd)
    scores = q @ k.transpose(1, 2) * attn.scale  # (batch, tokens, tokens)
    qi, ki = torch.arange(t)[:, None], torch.arange(t)[None, :]
    if not cls:
        blocked = qi != ki
    elif target == "patches>cls":
        blocked = (qi == 0) & (ki > 0)
    elif target == "cls>patches":
        blocked = (qi > 0) & (ki == 0)
    else:
        blocked = (qi > 0) & (ki > 0) & (qi != ki)
    return scores.masked_fill(blocked, float("-inf")).softmax(-1) @ v


class Reference:
    """M and its gradient by plain autograd on the transformers model: hooks capture each layer's layer-normed
    input and the input of out_proj (the heads' outputs), the image features come from get_image_features."""

    def __init__(self, model, pixels: torch.Tensor, text: torch.Tensor, scale: float, pairs: torch.Tensor | None = None):
        vision = model.vision_model
        self.model, self.layers = model, vision.encoder.layers
        xs, zs = {}, {}
        hooks = []
        for depth, layer in enumerate(self.layers, start=1):
            hooks.append(layer.layer_norm1.register_forward_hook(lambda _m, _a, out, d=depth: xs.__setitem__(d, out)))
            hooks.append(layer.self_attn.out_proj.register_forward_pre_hook(
                lambda _m, args, d=depth: zs.__setitem__(d, args[0])))
        try:
            with torch.enable_grad():
                emb = model.get_image_features(**image_inputs(model, pixels)).pooler_output
                logits = scale * (emb / emb.norm(dim=-1, keepdim=True)) @ text.to(emb.dtype).clone().T
                if pairs is None:  # the baseline's top two, the selected first
                    pairs = logits.topk(2, dim=-1).indices
                self.pairs = pairs
                m = logits.gather(1, pairs[:, :1])[:, 0] - logits.gather(1, pairs[:, 1:])[:, 0]
                grads = torch.autograd.grad(m.sum(), [zs[d] for d in range(1, len(self.layers) + 1)])
        finally:
            for hook in hooks:
                hook.remove()
        self.m = m.detach()
        self.x = {d: x.detach() for d, x in xs.items()}
        self.z = {d: z.detach() for d, z in zs.items()}
        self.grad = dict(enumerate(grads, start=1))

    def estimate(self, depth: int, head: int, kind: str, target: str, cls: bool, head_mean) -> torch.Tensor:
        attn = self.layers[depth - 1].self_attn
        hd = attn.head_dim
        sl = slice(head * hd, (head + 1) * hd)
        with torch.no_grad():
            za = changed_head(attn, self.x[depth], head, kind, target, cls, head_mean)
            return ((za - self.z[depth][..., sl]) * self.grad[depth][..., sl]).sum(dim=(1, 2))  # (batch,)


def run_pixels(db: Path, clip) -> tuple[list[int], torch.Tensor]:
    """The ids and pixels of the run's readable images, as the run read them."""
    with store.connect(db, read_only=True) as con:
        row = store.find_run(con, "t")
        images = store.run_images(con, row.run_id)
        failed = store.failed_images(con, row.run_id)
    kept = [(i, p) for i, _, p, _ in images if i not in failed]
    return [i for i, _ in kept], pixel_values(clip, [open_image(Path(p)) for _, p in kept])


# --------------------------------------------------------------------------------------------------
# The stored estimates against the reference.


def test_stored_estimates_equal_plain_autograd_for_every_kind(attributed_run):
    family, model_path, db = attributed_run
    cls = family == "clip"
    clip = load_clip(str(model_path), "cpu")
    ids, pixels = run_pixels(db, clip)
    text = text_embeddings(clip, [p for p, _ in PROMPTS])
    ref = Reference(clip.model, pixels, text, clip.logit_scale)
    # the prompts M compares are the stored baseline's selection and its runner-up, and so are the reference's
    stored_pairs = sql(db, "SELECT image_id, spec, prompt_id, other_prompt_id, metric FROM attributed_t ORDER BY ALL")
    assert {r[1] for r in stored_pairs} == set(every_spec(cls))
    assert len(stored_pairs) == len(ids) * len(every_spec(cls))
    picked = dict(sql(db, "SELECT image_id, prompt_id FROM selection_t WHERE ablation_id = 0"))
    for image_id, _, p, other, metric in stored_pairs:
        k = ids.index(image_id)
        assert p == picked[image_id] and [p, other] == ref.pairs[k].tolist()
        assert abs(metric - float(ref.m[k])) < 1e-4 * max(1.0, abs(float(ref.m[k])))
    head_mean = {d: z.mean(dim=0) for d, z in ref.z.items()}  # the run's dataset is these images
    stored = sql(db, "SELECT image_id, ablation, estimate FROM attributions ORDER BY ALL")
    n_heads = 4
    assert len(stored) == len(ids) * len(every_spec(cls)) * N_LAYERS * n_heads
    got: dict[str, np.ndarray] = {}
    for image_id, label, value in stored:
        got.setdefault(label, np.zeros(len(ids)))[ids.index(image_id)] = value
    worst = {}
    for spec_text in every_spec(cls):
        spec = parse_spec(spec_text)
        want = np.stack([ref.estimate(d, h, spec.kind, spec.target, cls, head_mean[d]).numpy()
                         for d in range(1, N_LAYERS + 1) for h in range(n_heads)], axis=1)  # (images, heads)
        have = np.stack([got[spec.ablation(d, h).label] for d in range(1, N_LAYERS + 1) for h in range(n_heads)],
                        axis=1)
        scale = np.abs(want).max()
        assert scale > 1e-3, spec_text  # the reference is not trivially zero
        # relative to the largest estimate of the kind; elementwise for those not near zero
        worst[spec_text] = np.abs(have - want).max() / scale
        big = np.abs(want) > 1e-2 * scale
        assert (np.abs(have - want)[big] / np.abs(want)[big]).max() < 1e-3, spec_text
    assert max(worst.values()) < 1e-4, worst


def test_z_a_is_what_head_attention_gives_that_head_bit_for_bit(tiny_clip, tiny_siglip):
    """For every kind and target, head by head: the attribution's z_A equals the engine's own head output
    (compute.kinds.head_attention on that head alone, out_proj's input captured)."""
    for path in (tiny_clip, tiny_siglip):
        clip = load_clip(str(path), "cpu")
        cls = clip.family == "clip"
        pixels = torch.randn(2, 3, 32, 32)
        layers = clip.model.vision_model.encoder.layers
        means = attention_means(clip.model, [pixels], {HEAD_MEAN_STAT: set(range(1, len(layers) + 1))})
        specs = [parse_spec(s, cls) for s in every_spec(cls)]
        text = text_embeddings(clip, ["a cat", "a dog"])
        a = Attributor(clip.model, specs, means, text, LogitScale(clip.logit_scale))
        seen = a.forward_backward(pixels, torch.tensor([[0, 1], [1, 0]]))
        for depth in (1, len(layers)):
            attn = layers[depth - 1].self_attn
            x = seen.x[depth - 1]
            for spec in specs:
                with torch.inference_mode():
                    mine = a.changed(depth, x, spec)  # (batch, heads, tokens, head_dim)
                for head in range(attn.num_heads):
                    captured = []
                    hook = attn.out_proj.register_forward_pre_hook(lambda _m, args, c=captured: c.append(args[0]))
                    try:
                        with torch.inference_mode():
                            head_attention(attn, x, kind=spec.kind, heads=(head,), target=spec.target,
                                           head_mean=means.get(HEAD_MEAN_STAT, {}).get(depth), cls=cls)
                    finally:
                        hook.remove()
                    hd = attn.head_dim
                    engine = captured[0][..., head * hd:(head + 1) * hd]  # (batch, tokens, head_dim)
                    assert torch.equal(mine[:, head], engine), (clip.family, depth, spec, head)
        # the pass leaves the model as it was: every parameter asks for its gradient again
        assert all(p.requires_grad for p in clip.model.vision_model.parameters())


# --------------------------------------------------------------------------------------------------
# Finite differences in float64.


def metric_with(model, pixels, text, scale, pairs, depth: int, head: int, replace: torch.Tensor | None):
    """M (batch,) with head ``head``'s output in layer ``depth`` replaced by ``replace`` (batch, tokens, head_dim)."""
    attn = model.vision_model.encoder.layers[depth - 1].self_attn
    hd = attn.head_dim

    def swap(_m, args):
        z = args[0].clone()
        z[..., head * hd:(head + 1) * hd] = replace
        return (z,)

    hook = attn.out_proj.register_forward_pre_hook(swap) if replace is not None else None
    try:
        with torch.no_grad():
            emb = model.get_image_features(**image_inputs(model, pixels)).pooler_output
    finally:
        if hook is not None:
            hook.remove()
    logits = scale * (emb / emb.norm(dim=-1, keepdim=True)) @ text.to(emb.dtype).T
    return logits.gather(1, pairs[:, :1])[:, 0] - logits.gather(1, pairs[:, 1:])[:, 0]


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_finite_differences_in_float64_tend_to_the_estimate(family, tmp_path):
    """(M(z + e (z_A - z)) - M(z)) / e with e = 1e-4, for a sample of heads and every kind, within 1e-3 of the
    estimate (relative), in float64."""
    clip = load_clip(str(save_model(family, tmp_path / "m")), "cpu")
    model = clip.model.double()
    cls = family == "clip"
    torch.manual_seed(1)
    pixels = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    text = text_embeddings(load_clip(str(tmp_path / "m"), "cpu"), [p for p, _ in PROMPTS]).double()
    scale = clip.logit_scale
    means = attention_means(model, [pixels], {HEAD_MEAN_STAT: set(range(1, N_LAYERS + 1))})
    specs = [parse_spec(s, cls) for s in every_spec(cls)]
    a = Attributor(model, specs, means, text, LogitScale(scale))
    base = Reference(model, pixels, text, scale)
    pairs = base.pairs
    seen = a.forward_backward(pixels, pairs)
    estimates = a.estimates_of(seen)  # (batch, K) float64
    assert estimates.dtype == torch.float64
    e = 1e-4
    m0 = metric_with(model, pixels, text, scale, pairs, 1, 0, None)
    checked = 0
    for s, spec in enumerate(specs):
        for depth, head in ((1, 0), (2, 3), (N_LAYERS, 1)):
            column = s * N_LAYERS * 4 + (depth - 1) * 4 + head
            est = estimates[:, column]
            hd = model.vision_model.encoder.layers[depth - 1].self_attn.head_dim
            with torch.no_grad():
                za = a.changed(depth, seen.x[depth - 1], spec)[:, head]  # (batch, tokens, head_dim)
            z = base.z[depth][..., head * hd:(head + 1) * hd]
            fd = (metric_with(model, pixels, text, scale, pairs, depth, head, z + e * (za - z)) - m0) / e
            # Where the estimate is not small the forward difference's own error (e/2 times the second
            # derivative, about 1e-5 here) is below 1e-3 of it; elsewhere (an ablation that hardly reaches M, such
            # as cls>patches in the last layer) the two agree to that error.
            big = est.abs() > 1e-2
            rel = ((fd - est).abs() / est.abs())[big]
            assert not big.any() or float(rel.max()) < 1e-3, (family, spec, depth, head, fd, est)
            assert float((fd - est).abs().max()) < 2e-5, (family, spec, depth, head, fd, est)
            checked += int(big.sum())
    assert checked >= 2 * len(specs)


# --------------------------------------------------------------------------------------------------
# The experiment file's [attribution] table, and what a run without M stores.


def test_the_experiment_files_attribution_table(tiny_clip, tmp_path):
    from compute.errors import InputError

    coco = make_coco(tmp_path / "coco", n=2)
    plain = load_experiment(write_experiment(tmp_path / "a.toml", tiny_clip, coco, tmp_path / "x.duckdb"))
    assert plain.attribution.kinds == []
    on = load_experiment(write_experiment(tmp_path / "b.toml", tiny_clip, coco, tmp_path / "x.duckdb",
                                          more='[attribution]\nkinds = ["identity", "knockout: patches>cls", "identity"]\n'))
    assert on.attribution.kinds == ["identity", "knockout:patches>cls"]  # canonical, duplicates dropped
    assert on.identity_hash() == plain.identity_hash()  # it only adds rows: not part of the run's identity
    bad = {
        '[attribution]\nkind = ["identity"]\n': "unknown key 'kind' in [attribution]",
        '[attribution]\nkinds = "identity"\n': "attribution.kinds must be a list of strings",
        '[attribution]\nkinds = ["identiy"]\n': "unknown attribution kind 'identiy'",
        '[attribution]\nkinds = ["knockout"]\n': "knockout needs a target; use one of knockout:patches>cls",
        '[attribution]\nkinds = ["knockout:cls"]\n': "unknown knockout target 'cls'",
        '[attribution]\nkinds = ["zero:patches>cls"]\n': "zero takes no target",
    }
    for text, message in bad.items():
        path = write_experiment(tmp_path / "bad.toml", tiny_clip, coco, tmp_path / "x.duckdb", more=text)
        with pytest.raises(InputError, match=re.escape(message)):
            load_experiment(path)
    assert parse_spec("knockout:patches>patches", cls=False) == Spec("knockout", "patches>patches")
    with pytest.raises(InputError, match="needs a CLS token"):
        parse_spec("knockout:cls>patches", cls=False)


def test_siglip_refuses_a_cls_target_before_writing(tiny_siglip, tmp_path):
    from compute.errors import InputError

    coco = make_coco(tmp_path / "coco", n=2)
    db = tmp_path / "s.duckdb"
    exp = write_experiment(tmp_path / "s.toml", tiny_siglip, coco, db, sweep="none",
                           more='[attribution]\nkinds = ["knockout:patches>cls"]\n')
    with pytest.raises(InputError, match="needs a CLS token"):
        run(load_experiment(exp), **QUIET)
    assert not db.exists()


def test_one_prompt_has_no_margin_so_nothing_is_stored(tiny_clip, tmp_path):
    coco = make_coco(tmp_path / "coco", n=3)
    db = tmp_path / "one.duckdb"
    exp = write_experiment(tmp_path / "one.toml", tiny_clip, coco, db, sweep="none", prompts=PROMPTS[:1],
                           more='[attribution]\nkinds = ["identity"]\n')
    said = []
    assert run(load_experiment(exp), progress=False, echo=said.append).complete
    assert sum("needs two prompts" in line for line in said) == 1
    for table in ("attribution_t", "attributed_t", "estimate_t"):
        assert sql(db, f"SELECT COUNT(*) FROM {table}") == [(0,)], table
