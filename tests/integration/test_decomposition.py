"""The decomposition's views held to an independent formulation written here from DESIGN.md's definitions:
hooks on the transformers model (not the engine's code) give every component at the output tokens, the final
layer norm's inputs and SigLIP's pooling probabilities; the readout, each kind's changed attention and the
mean-ablation lab are written out plainly below. On tiny random CLIP, SigLIP and SigLIP 2 (NaFlex) models
(perturbed, so biases and norms take part), saved and reloaded, swept with [decomposition] enabled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import sql

from analysis import queries
from analysis.decomposition import PRESETS, preset
from compute import store
from compute.config import load_experiment
from compute.dataset import open_image
from compute.decomposition import token_shares
from compute.kinds import kind_targets
from compute.models import load_clip, pixel_values
from compute.runner import run
from compute.scoring import text_embeddings
from compute.towers import image_inputs
from tools.synthetic import PROMPTS, make_coco, save_random_clip, write_experiment
from tools.synthetic_siglip import save_random_siglip, save_random_siglip2

QUIET = {"progress": False, "echo": lambda _: None}
DECOMPOSE = "[decomposition]\nenabled = true\ntextspan_layers = 2\ntextspan_texts = 3\n"
N_LAYERS = 4


def extras(cls: bool) -> list[str]:
    """Every registered kind (and target) on whole single layers, on heads and on blocks."""
    out = []
    for kind, target in kind_targets(cls):
        t = f"/{target}" if target else ""
        out += [f"{kind}:2{t}", f"{kind}:4{t}", f"{kind}:3{t}/h1", f"{kind}:1{t}/h0,h2", f"{kind}:2-3{t}"]
    return out


@pytest.fixture(scope="module", params=["clip", "siglip", "siglip2"])
def decomposed_run(request, tmp_path_factory):
    """(family, model path, store) of a run with decomposition: 8 images, every kind at every grain."""
    family = request.param
    tmp = tmp_path_factory.mktemp(f"decomp-{family}")
    if family == "clip":
        model = save_random_clip(tmp / "model", layers=N_LAYERS, width=32, heads=4, perturb=0.1)
    elif family == "siglip":
        model = save_random_siglip(tmp / "model", layers=N_LAYERS, width=32, heads=4)
    else:
        model = save_random_siglip2(tmp / "model", layers=N_LAYERS, width=32, heads=4)
    coco = make_coco(tmp / "coco", n=8)
    db = tmp / "d.duckdb"
    exp = write_experiment(tmp / "d.toml", model, coco, db, sweep="none", extra=tuple(extras(family == "clip")),
                           batch_size=3, more=DECOMPOSE)
    assert run(load_experiment(exp), **QUIET).complete
    return family, model, db


# --------------------------------------------------------------------------------------------------
# The independent formulation.


class Hooked:
    """One unablated pass of the transformers model with forward hooks: the residual entering layer 1 (h0),
    per layer the layer-normed input (x), out_proj's input (heads), the attention block's output (attn) and
    the MLP's output (mlp), the last layer's output (final), SigLIP's pooling attention output, and the
    image features."""

    def __init__(self, model, pixels: torch.Tensor) -> None:
        vision = model.vision_model
        self.model, self.cls = model, model.config.model_type == "clip"
        seen: dict = {"x": {}, "heads": {}, "attn": {}, "mlp": {}}
        hooks = [(vision.pre_layrnorm if self.cls else vision.embeddings).register_forward_hook(
            lambda _m, _a, out: seen.__setitem__("h0", out))]
        for depth, layer in enumerate(vision.encoder.layers, start=1):
            hooks += [
                layer.layer_norm1.register_forward_hook(lambda _m, _a, out, d=depth: seen["x"].__setitem__(d, out)),
                layer.self_attn.out_proj.register_forward_pre_hook(
                    lambda _m, args, d=depth: seen["heads"].__setitem__(d, args[0])),
                layer.self_attn.register_forward_hook(lambda _m, _a, out, d=depth: seen["attn"].__setitem__(d, out[0])),
                layer.mlp.register_forward_hook(lambda _m, _a, out, d=depth: seen["mlp"].__setitem__(d, out)),
            ]
        hooks.append(vision.post_layernorm.register_forward_pre_hook(lambda _m, args: seen.__setitem__("final", args[0])))
        if not self.cls:
            hooks.append(vision.head.attention.register_forward_hook(
                lambda _m, _a, out: seen.__setitem__("pool_attn", out[0][:, 0])))
        try:
            with torch.no_grad():
                self.features = model.get_image_features(**image_inputs(model, pixels)).pooler_output
        finally:
            for hook in hooks:
                hook.remove()
        self.seen = seen
        ln = vision.post_layernorm
        hn = seen["final"]
        # CLIP's post_layernorm reads the CLS token alone: (batch,); SigLIP's every token: (batch, tokens)
        self.sigma = torch.sqrt(hn.var(dim=-1, unbiased=False) + ln.eps)
        if not self.cls:
            with torch.no_grad():
                x = ln(hn)
                probe = vision.head.probe.expand(hn.shape[0], -1, -1)
                _, p = vision.head.attention(probe, x, x, need_weights=True, average_attn_weights=False)
            self.probs = p[:, :, 0]  # (batch, K, tokens) frozen

    def T(self, c: torch.Tensor) -> torch.Tensor:
        """T(c) by the definition: c (batch, tokens, width) the component at every token (CLIP reads token 0)."""
        vision = self.model.vision_model
        ln = vision.post_layernorm
        with torch.no_grad():
            if self.cls:
                c0, sigma = c[:, 0], self.sigma
                normed = ln.weight * (c0 - c0.mean(-1, keepdim=True)) / sigma[:, None]
                return normed @ self.model.visual_projection.weight.T
            mha = vision.head.attention
            w = c.shape[-1]
            k_heads, hd = mha.num_heads, w // mha.num_heads
            normed = ln.weight * (c - c.mean(-1, keepdim=True)) / self.sigma[..., None]  # (batch, tokens, width)
            values = normed @ mha.in_proj_weight[2 * w:].T  # (batch, tokens, width), the value projection
            heads = [torch.einsum("bt,btd->bd", self.probs[:, k], values[..., k * hd:(k + 1) * hd])
                     for k in range(k_heads)]
            return torch.cat(heads, dim=-1) @ mha.out_proj.weight.T

    def final_ln_bias(self) -> torch.Tensor:
        vision = self.model.vision_model
        beta = vision.post_layernorm.bias
        with torch.no_grad():
            if self.cls:
                return self.model.visual_projection.weight @ beta
            mha = vision.head.attention
            w = beta.shape[0]
            return mha.out_proj.weight @ (mha.in_proj_weight[2 * w:] @ beta + mha.in_proj_bias[2 * w:]) \
                + mha.out_proj.bias

    def components(self) -> dict[tuple[str, int | None, int | None], torch.Tensor]:
        """{(component, layer, head): T(c) (batch, E)} for every component (the last terms as they are)."""
        s = self.seen
        b, t, w = s["h0"].shape
        out = {("embeddings", 0, None): self.T(s["h0"])}
        for depth, layer in enumerate(self.model.vision_model.encoder.layers, start=1):
            attn = layer.self_attn
            hd = attn.head_dim
            for h in range(attn.num_heads):
                o = s["heads"][depth][..., h * hd:(h + 1) * hd]  # (batch, tokens, hd)
                out[("head", depth, h)] = self.T(o @ attn.out_proj.weight[:, h * hd:(h + 1) * hd].T)
            out[("attention_bias", depth, None)] = self.T(attn.out_proj.bias.expand(b, t, w))
            out[("mlp", depth, None)] = self.T(s["mlp"][depth])
        out[("final_ln_bias", None, None)] = self.final_ln_bias().expand(b, -1)
        if not self.cls:
            out[("pooling_mlp", None, None)] = self.features - s["pool_attn"]
        return out


def changed_attention(attn, x: torch.Tensor, kind: str, heads: tuple[int, ...], target: str, cls: bool,
                      mean: torch.Tensor | None, head_mean: torch.Tensor | None) -> torch.Tensor:
    """The attention block's output under an ablation, from DESIGN.md's words. x: (batch, tokens, width)."""
    b, t, w = x.shape
    n, hd = attn.num_heads, attn.head_dim
    with torch.no_grad():
        q = attn.q_proj(x).view(b, t, n, hd).transpose(1, 2)
        k = attn.k_proj(x).view(b, t, n, hd).transpose(1, 2)
        v = attn.v_proj(x).view(b, t, n, hd).transpose(1, 2)  # (batch, heads, tokens, hd)
        scores = q @ k.transpose(-1, -2) * attn.scale
        qi, ki = torch.arange(t)[:, None], torch.arange(t)[None, :]
        if not cls:
            blocked = qi != ki  # without a CLS token patches>patches leaves every token reading itself
        elif target == "patches>cls":
            blocked = (qi == 0) & (ki > 0)
        elif target == "cls>patches":
            blocked = (qi > 0) & (ki == 0)
        else:
            blocked = (qi > 0) & (ki > 0) & (qi != ki)
        probs = {"identity": torch.eye(t).expand(b, n, t, t), "uniform": torch.full((b, n, t, t), 1.0 / t),
                 "knockout": scores.masked_fill(blocked, float("-inf")).softmax(-1)}
        if not heads:  # the whole block
            if kind == "zero":
                return torch.zeros(b, t, w)
            if kind == "mean":
                return mean.expand(b, t, w)
            o = probs[kind] @ v
        else:
            o = scores.softmax(-1) @ v  # the other heads run as usual
            for h in heads:
                if kind == "zero":
                    o[:, h] = 0
                elif kind == "mean":
                    o[:, h] = head_mean[:, h * hd:(h + 1) * hd]
                else:
                    o[:, h] = probs[kind][:, h] @ v[:, h]
        return attn.out_proj(o.transpose(1, 2).reshape(b, t, w))


def run_inputs(db: Path, model_path: Path) -> dict:
    """The run's model (loaded), images' pixels as the run read them, labels, prompts' embeddings, the hooked
    pass, and the dataset means of every layer (hooked)."""
    clip = load_clip(str(model_path), "cpu")
    with store.connect(db, read_only=True) as con:
        row = store.find_run(con, "t")
        images = store.run_images(con, row.run_id)
        ablations = sql(db, "SELECT ablation_id, ablation, kind, layers, heads, target FROM ablation_t ORDER BY 1")
    pixels = pixel_values(clip, [open_image(Path(p)) for _, _, p, _ in images])
    hooked = Hooked(clip.model, pixels)
    texts = [p for p, _ in PROMPTS]
    return {"clip": clip, "ids": [i for i, *_ in images], "labels": [set(lab) for *_, lab in images],
            "prompts": texts, "prompt_labels": [lab for _, lab in PROMPTS], "text": text_embeddings(clip, texts),
            "hooked": hooked, "ablations": ablations, "scale": clip.logit_scale, "bias": clip.logit_bias,
            "mean": {d: a.mean(0) for d, a in hooked.seen["attn"].items()},
            "head_mean": {d: hd.mean(0) for d, hd in hooked.seen["heads"].items()}}


@pytest.fixture(scope="module")
def inputs(decomposed_run):
    _, model, db = decomposed_run
    return run_inputs(db, model)


def shares(ref: dict, t: torch.Tensor) -> np.ndarray:
    """scale * <T, t_p> / |e|: (batch, E) -> (batch, P)."""
    e = ref["hooked"].features
    return (ref["scale"] * (t @ ref["text"].T) / e.norm(dim=-1, keepdim=True)).numpy()


# --------------------------------------------------------------------------------------------------
# Components and their shares.


def test_the_components_sum_to_the_embedding_and_their_shares_to_the_logit(decomposed_run, inputs):
    family, _, db = decomposed_run
    hooked = inputs["hooked"]
    terms = hooked.components()
    total = sum(terms.values())
    e = hooked.features
    assert ((total - e).norm(dim=-1) / e.norm(dim=-1)).max() < 1e-5  # the definition itself holds
    stored = sql(db, "SELECT image_id, embedding FROM embedding_t WHERE ablation_id = 0 ORDER BY image_id")
    stored_e = np.stack([np.frombuffer(blob, np.float32) for _, blob in stored])
    assert np.abs(stored_e - e.numpy()).max() < 1e-5  # the run saw these pixels
    # Every stored ablation's shares (baseline, the one stored) sum to its stored logit.
    sums = sql(db, "SELECT c.image_id, c.prompt, SUM(c.logit) + ?, s.logit FROM contributions c JOIN scores s "
                   "ON s.run = c.run AND s.image_id = c.image_id AND s.prompt = c.prompt AND s.ablation = c.ablation "
                   "GROUP BY ALL", [inputs["bias"]])
    assert len(sums) == 8 * len(PROMPTS)
    assert max(abs(a - b) for *_, a, b in sums) < 1e-4
    assert {r[0] for r in sql(db, "SELECT DISTINCT ablation FROM contributions")} == {"baseline"}


def test_every_component_kind_equals_the_hooked_formulation(decomposed_run, inputs):
    family, _, db = decomposed_run
    terms = inputs["hooked"].components()
    rows = sql(db, "SELECT image_id, component, layer, head, prompt, logit FROM contributions ORDER BY ALL")
    want_kinds = {"embeddings", "head", "attention_bias", "mlp", "final_ln_bias"} | \
        (set() if family == "clip" else {"pooling_mlp"})
    assert {r[1] for r in rows} == want_kinds
    assert len(rows) == 8 * len(terms) * len(PROMPTS)
    position = {i: k for k, i in enumerate(inputs["ids"])}
    prompt = {p: k for k, p in enumerate(inputs["prompts"])}
    want = {key: shares(inputs, t) for key, t in terms.items()}
    worst = {}
    for image_id, component, layer, head, text, logit in rows:
        diff = abs(logit - want[(component, layer, head)][position[image_id], prompt[text]])
        worst[component] = max(worst.get(component, 0.0), diff)
    assert max(worst.values()) < 1e-4, worst
    # The stored vectors are T(c) / |e| in float32.
    with store.connect(db, read_only=True) as con:
        run_id = store.find_run(con, "t").run_id
        comps = store.run_components(con, run_id)
        vectors = store.component_vectors(con, run_id, inputs["ids"], [c[0] for c in comps])
    e = inputs["hooked"].features.norm(dim=-1, keepdim=True)
    for cid, component, layer, head in comps:
        ref = (terms[(component, layer, head)] / e).numpy()
        assert np.abs(vectors[:, cid] - ref).max() < 1e-5, (component, layer, head)
    # and they add up to the embedding before normalisation (over |e|): stored vectors x stored |e|
    with store.connect(db, read_only=True) as con:
        norms = store.decomposed(con, run_id, inputs["ids"])
    embedding = vectors.sum(axis=1) * np.array([norms[i][0] for i in inputs["ids"]])[:, None]
    stored = sql(db, "SELECT embedding FROM embedding_t WHERE ablation_id = 0 ORDER BY image_id")
    stored_e = np.stack([np.frombuffer(blob, np.float32) for (blob,) in stored])
    assert (np.linalg.norm(embedding - stored_e, axis=1) / np.linalg.norm(stored_e, axis=1)).max() < 1e-5


# --------------------------------------------------------------------------------------------------
# Direct effects.


def test_direct_effects_of_every_kind_at_every_grain_equal_the_hooked_formulation(decomposed_run, inputs):
    family, _, db = decomposed_run
    cls = family == "clip"
    hooked = inputs["hooked"]
    layers = hooked.model.vision_model.encoder.layers
    effects = sql(db, "SELECT image_id, ablation, prompt, total, direct, indirect FROM effects ORDER BY ALL")
    ablations = [a for a in inputs["ablations"] if a[1] != "baseline"]
    assert len(effects) == 8 * len(ablations) * len(PROMPTS)
    position = {i: k for k, i in enumerate(inputs["ids"])}
    prompt = {p: k for k, p in enumerate(inputs["prompts"])}
    want = {}
    for _, label, kind, abl_layers, heads, target in ablations:
        delta = 0
        for depth in abl_layers:
            changed = changed_attention(layers[depth - 1].self_attn, hooked.seen["x"][depth], kind, tuple(heads),
                                        target or "", cls, inputs["mean"][depth], inputs["head_mean"][depth])
            delta = delta + hooked.T(changed - hooked.seen["attn"][depth])  # everything else frozen
        want[label] = shares(inputs, delta)
    worst = 0.0
    for image_id, label, text, total, direct, indirect in effects:
        worst = max(worst, abs(direct - want[label][position[image_id], prompt[text]]))
        assert abs(total - direct - indirect) < 1e-5
    assert worst < 1e-4
    if cls:  # a knockout that leaves the CLS row whole has no direct effect (float32 rounding aside)
        unseen = [r for r in effects if r[1] in ("knockout:2/cls>patches", "knockout:4/patches>patches")]
        assert unseen and max(abs(r[4]) for r in unseen) < 1e-5
    # total = the ablation's stored logit minus the baseline's
    check = sql(db, "SELECT e.total, a.logit - b.logit FROM effects e "
                    "JOIN scores a ON a.image_id = e.image_id AND a.ablation = e.ablation AND a.prompt = e.prompt "
                    "JOIN scores b ON b.image_id = e.image_id AND b.ablation = 'baseline' AND b.prompt = e.prompt")
    assert len(check) == len(effects) and max(abs(x - y) for x, y in check) < 1e-6


# --------------------------------------------------------------------------------------------------
# Per-token shares, the mean-ablation lab.


def test_per_token_shares_sum_to_their_components_share(decomposed_run, inputs):
    family, model, db = decomposed_run
    clip, hooked = inputs["clip"], inputs["hooked"]
    with store.connect(db, read_only=True) as con:
        images = store.run_images(con, store.find_run(con, "t").run_id)
    pixels = pixel_values(clip, [open_image(Path(p)) for _, _, p, _ in images[:3]])
    terms = hooked.components()
    for layer, head in ((1, 0), (3, 2), (4, 1)):
        for by in ("read", "written"):
            got = token_shares(clip.model, pixels, inputs["text"], clip.logit_scale, layer, head, by).sum(1)
            assert np.abs(got.numpy() - shares(inputs, terms[("head", layer, head)])[:3]).max() < 1e-4
        whole = token_shares(clip.model, pixels, inputs["text"], clip.logit_scale, layer, None, "read").sum(1)
        heads = sum(shares(inputs, terms[("head", layer, h)])[:3] for h in range(4))
        assert np.abs(whole.numpy() - heads).max() < 1e-4
        mlp = token_shares(clip.model, pixels, inputs["text"], clip.logit_scale, layer, component="mlp",
                           by="written")
        assert np.abs(mlp.sum(1).numpy() - shares(inputs, terms[("mlp", layer, None)])[:3]).max() < 1e-4
        if family == "clip":  # written at the CLS token only
            assert float(mlp[:, 1:].abs().max()) == 0.0
    # the read split is the attention probability times the value: on CLIP the CLS query's row
    read = token_shares(clip.model, pixels, inputs["text"], clip.logit_scale, 4, 1, "read")
    assert read.shape == (3, hooked.seen["h0"].shape[1], len(PROMPTS))


@pytest.mark.parametrize("which", ["none", *PRESETS, "one head"])
def test_the_mean_ablation_lab_equals_a_pass_with_those_direct_contributions_at_their_means(
        decomposed_run, inputs, which):
    _, _, db = decomposed_run
    with store.connect(db, read_only=True) as con:
        run_id = store.find_run(con, "t").run_id
        comps = queries.components(con, run_id)
        chosen = [] if which == "none" else [3] if which == "one head" else preset(comps, which, n=2)
        lab = queries.mean_ablation(con, run_id, chosen)
    assert chosen or which == "none"
    terms = inputs["hooked"].components()
    keys = [tuple(c[1:]) for c in sql(db, "SELECT * EXCLUDE (run_id) FROM component_t ORDER BY component_id")]
    e = inputs["hooked"].features.clone()
    for cid in chosen:
        t = terms[keys[cid]]
        e = e - t + t.mean(dim=0, keepdim=True)  # its direct contribution at its mean over the run's images
    picks = (e @ inputs["text"].T).argmax(dim=-1).numpy()
    assert list(lab["image_id"]) == inputs["ids"]
    assert list(lab["prompt_id"]) == list(picks)
    correct = [inputs["prompt_labels"][p] in labels for p, labels in zip(picks, inputs["labels"], strict=True)]
    assert lab["correct"].mean() == pytest.approx(np.mean(correct))
    if which == "none":  # the baseline's own picks
        base = sql(db, "SELECT image_id, prompt_id FROM selection_t WHERE ablation_id = 0 ORDER BY 1")
        assert [p for _, p in base] == list(picks)
