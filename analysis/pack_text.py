"""The words of the figure pack: what each of its files shows (``describe``, from the file's name) and the
pack's README (where it came from, what the numbers mean, every file with what it shows and its SHA-256).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from analysis import latex, tables
from analysis.pack_data import PackData
from analysis.provenance import Provenance
from analysis.text import md_cell

SIZE_TITLES = {"screen": "as on screen", "one-column": "one column (3.5 in, 252 pt)",
               "two-column": "two columns (7 in, 504 pt)"}


def describe(name: str, data: PackData) -> str:
    """What the pack's file ``name`` (no extension, no part suffix) shows, in one line."""
    metric = name.split("_", 1)[1] if "_" in name else ""
    title = tables.METRIC_TITLES.get(metric, metric)
    image = f"image {data.image_id}"
    group, _, quantity = name.removeprefix("decomposition_effects_").rpartition("_")  # decomposition_effects_<g>_<q>
    rules = [
        (r"means_", f"{title} per ablation: mean over images with its 95% bootstrap interval"),
        (r"change_", f"change in {title} against baseline per ablation, paired 95% interval, coloured by "
                     "significance (Holm-adjusted p < 0.05)"),
        (r"layers_", f"{title} per ablated single layer, 95% band; filled points: significant change"),
        (r"blocks_", f"{title} per ablated block of layers, 95% interval; *: significant change"),
        (r"label_accuracy$", "accuracy per ablation and true label"),
        (r"heads_", f"change in accuracy when one head at a time is ablated ({metric}), per layer and head"),
        (r"flow$", "change in accuracy when one flow of information is knocked out in one layer"),
        (r"confusion_", f"true x selected label under {metric.replace('_', ':', 1)}, each image counted once"),
        (r"estimates_", f"each head's estimated change of the margin M when it alone is ablated ({metric}): "
                        "attribution patching, mean over images"),
        (r"attribution_.*_pairs$", f"estimate against exact change of the margin M, every (image, head) pair, "
                                   f"binned ({metric.removesuffix('_pairs')})"),
        (r"attribution_", f"estimate against exact change of the margin M per head, mean over images ({metric})"),
        (r"attribution$", "attribution patching's estimates against the exact effects: Spearman's rho, top-5 and "
                          "top-10 recall of the most harmful heads, sign agreement, per head and per image"),
        (r"image\d+_logits$", f"{image}: the logit of every prompt under every ablation"),
        (r"image\d+_logits_", f"{image}: the logits of its top prompts, baseline against {data.image_ablation}"),
        (r"image\d+_attention_", f"{image}: CLS attention maps at every layer, baseline against "
                                 f"{data.image_ablation} (attention probabilities, not an attribution)"),
        (r"image\d+_figure5$", f"{image}: the study's Figure 5, the prompt each ablation selects and the "
                               "caption that continues it"),
        (r"decomposition_layers$", "direct share of each layer's attention and MLP in the correct prompt's logit, "
                                   "mean over the decomposed images with its 95% interval"),
        (r"decomposition_heads$", "direct share of each head in the correct prompt's logit, per layer and head"),
        (r"decomposition_effects$", "total, direct and indirect effect of each single-layer (and single-head) "
                                    "ablation on the correct prompt's logit, 95% intervals, paired t-test, Holm"),
        (r"decomposition_effects_", f"{quantity} effect on the correct prompt's logit when one head at a time "
                                    f"is ablated ({group}), per layer and head"),
        (r"decomposition_mean_ablation$", "the mean-ablation lab: accuracy with the direct contributions of all "
                                          "but the last N layers (and other presets) replaced by their means"),
        (r"decomposition_texts$", "TextSpan: the texts that describe each head's direct contributions"),
        (r"table1$", "Table 1: per ablation, each metric's mean, 95% interval and change against baseline "
                     "with its significance mark"),
        (r"table1_", f"Table 1 for {title} alone (fits a column)"),
        (r"mcnemar$", "McNemar's paired test of every ablation's correctness against baseline, Holm-adjusted"),
        (r"selections$", "every selection of the run: one row per image x ablation"),
    ]
    return next((what for pattern, what in rules if re.match(pattern, name)), name)


def pack_readme(data: PackData, prov: Provenance, size: str, files: list[tuple[str, str, bytes]],
                figures: Sequence[str] | None = None) -> str:
    """The pack's README: where it came from, what the numbers mean, every file with what it shows and its
    SHA-256 (the provenance of the files whose format has no room for it: CSV). ``figures``: the names or
    patterns the figures were picked by (None: every figure)."""
    info = data.info
    lines = [f"# Figure pack of run {prov.run}", ""]
    lines += [f"- {line}" for line in prov.lines()]
    lines += [
        f"- Vision tower: {tables.family_text(info.get('family'))}",
        f"- {info.get('n_images')} images x {info.get('n_ablations')} ablations x {info.get('n_prompts')} prompts",
        f"- Figures: {SIZE_TITLES[size]}" + (f"; drawn over {data.slice_caption}" if data.slice_caption else ""),
        f"- Ablations shown: {', '.join(data.chosen)}" if data.chosen is not None else "- Ablations shown: all",
        # as code: a pattern's * and _ are not Markdown (a backtick matches no figure, so none gets here)
        *([f"- Figures picked: {', '.join(f'`{p}`' for p in figures)} (the tables: all)"] if figures is not None
          else []),
        "",
        "logit is the model's own logit for an (image, prompt) pair (CLIP: logit_scale x cosine; SigLIP: "
        "logit_scale x cosine + logit_bias); prob is the softmax over the run's prompts and the selected prompt "
        "its argmax; score_baseline and caption_score are cosines with the unablated image embedding. "
        "Significance (marks, colours, mcnemar.csv): Holm-adjusted p < 0.05 over the run's ablations, McNemar's "
        "paired test for accuracy, a paired bootstrap over images for the scores; decided over every ablation "
        "of the run, whichever are shown.",
        "",
        "Where each format keeps its provenance: PDF document information, SVG <metadata>, PNG text chunks, a "
        "comment atop LaTeX and Markdown, Parquet schema metadata; CSV files have none inside (a comment line "
        "would break CSV readers): this README is their record, matched by SHA-256.",
        "",
        r"LaTeX: \usepackage{" + ",".join(latex.PACKAGES) + r"}; \input a table1*.tex or *_figure5.tex inside "
        r"a table (a column: table1_<metric>.tex fits one) or table* (the page's width); each fits \linewidth.",
        "",
        "A figure too tall for a page or too wide for the column is split into parts (_part<K>of<N>), all on the "
        "same scales.",
        "",
        "| File | What it shows | SHA-256 |",
        "|---|---|---|",
    ]
    lines += [f"| {md_cell(name)} | {md_cell(what)} | {hashlib.sha256(content).hexdigest()[:16]} |"
              for name, what, content in files]
    return "\n".join(lines) + "\n"
