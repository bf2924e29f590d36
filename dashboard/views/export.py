"""Export: the figure pack with a preview, the ablations it shows (chosen and ordered), its confusion charts
and a size for a paper's column; Table 1 (Markdown, LaTeX, CSV) with its preview; an image's Figure 5 table;
the selections of a slice as CSV and Parquet, with filters of their own. The zip holds exactly the files
``python -m compute export`` writes with the same choices (analysis.figures.pack_files), and each single
download is one of those files under its name. Files are made when a button is pressed, not on every redraw."""

import streamlit as st

from analysis import figures, latex, queries, slices, stats, tables
from analysis.pack_tables import figure5_markdown, parquet_bytes
from analysis.pack_text import SIZE_TITLES, describe
from analysis.provenance import Provenance, stamp
from analysis.text import md, md_list
from compute import store
from dashboard import widgets
from dashboard.context import context, no_results
from dashboard.reading import load, snapshot
from dashboard.state import get_param, param_multiselect, param_select

OUTCOMES = ["all", "wrong", "right", "flip", "broken", "fixed", "changed"]
SEP = "|"  # between ablation labels in the URL (labels hold commas, never a bar)
CAPTION_COLUMNS = ("caption", "caption_score")  # of a selection: empty in a run without a captioner
FORMAT_NAMES = {"md": "Markdown", "tex": "LaTeX", "csv": "CSV"}

ctx = context()
st.title("Export")
st.caption("The same files from a shell: `python -m compute export --run RUN --out DIR` (see its --help for "
           "--ablations, --confusion, --size and --image).")
if no_results(ctx):
    st.stop()

true_labels = list(load(queries.true_labels, ctx.run_id)["label"])
names = ctx.ablation_names()

# --------------------------------------------------------------------------------------------------
st.header("Figures and Table 1")
st.caption("These choices shape the charts, Table 1 and the Figure 5 table; significance is decided over "
           f"every ablation of the run first, so choosing fewer changes no mark. {stats.RULE}")
row = st.columns([2, 1, 1])
chosen = param_multiselect("Ablations, in this order", names, "figures", sep=SEP, default=names, container=row[0],
                           help="Remove ablations, or remove and add them back to change their order.") or names
size = param_select("Size", list(figures.SIZES), "size", format_func=SIZE_TITLES.get, container=row[1])
label = widgets.label_select("Images with true label", "fig_label", true_labels, container=row[2])
image_slice = slices.true_label(label)
shows = tuple(chosen) if chosen != names else None  # None: every ablation, as the command line says it
image_param = get_param("image")  # the image and ablation of the Image page, from the URL or this session
image_id = int(image_param) if image_param.isdigit() else None
image_ablation = get_param("ablation")
image_ablation = image_ablation if image_ablation in names else ctx.baseline_name
# Everything the charts are drawn from, cached; charts are drawn only for the preview and the downloads. The
# confusion charts: the URL's, else the command line's default (baseline and the least accurate ablation).
asked = tuple(c for c in get_param("confusion").split(SEP) if c in names) or None
data = load(figures.pack_data, ctx.run_id, image_slice, asked, image_id, image_ablation, shows)
confusion = tuple(param_multiselect("Confusion charts for", names, "confusion", sep=SEP, default=tuple(data.confusion),
                                    help="The command line's --confusion; by default baseline and the ablation "
                                    "with the lowest accuracy.")) or tuple(data.confusion)
if confusion != tuple(data.confusion):
    data = load(figures.pack_data, ctx.run_id, image_slice, confusion, image_id, image_ablation, shows)
key = (ctx.run_id, image_slice, tuple(data.confusion), image_id, image_ablation, shows)


@st.cache_data(show_spinner=False, max_entries=16)
def pack_figures(db: str, token: tuple, key: tuple, size: str, _data: figures.PackData) -> dict:
    """The pack's figures at ``size`` as specs (``key``: what the pack was read with, for the cache)."""
    return figures.pack_figures(_data, size)


figs = pack_figures(str(ctx.db), snapshot(), key, size, data)
prov = Provenance.of_run(data.run, ctx.db)
st.caption(f"{len(figs)} figures of {len(chosen)} ablations over {md(image_slice.caption)}; confusion under "
           f"{md_list(data.confusion)}"
           + (f"; the logits and attention maps of image {image_id}" if image_id is not None else "") + ".")


@st.cache_data(show_spinner="Drawing the preview...", max_entries=32)
def preview_png(db: str, token: tuple, key: tuple, name: str, size: str) -> bytes:
    """The PNG of one figure of the pack."""
    return figures.render_all(figs[name], ["png"])["png"]


shown = param_select("Preview", list(figs), "preview", container=st.columns([1, 2])[0])
points = figures.SIZES[size]
st.image(preview_png(str(ctx.db), snapshot(), key, shown, size),
         width=round(points * 96 / 72) if points else "stretch",  # a paper size at its printed size
         caption=f"{md(shown)}: {md(figs[shown].what)}; {md(SIZE_TITLES[size])}")


def _attention() -> bytes:
    # The image's CLS attention maps at every layer (the Image page's section), computed from the run's model.
    with store.connect(ctx.db, read_only=True) as con:
        return figures.attention_png(con, ctx.name, image_id, image_ablation)


def _selections():
    # Download callbacks run when a button is pressed: they open the store themselves, without st.* calls.
    with store.connect(ctx.db, read_only=True) as con:
        return figures.selections_frame(con, ctx.run_id)


def _zip() -> bytes:
    attention = _attention() if image_id is not None else None
    return figures.pack_zip(figures.pack_files(data, prov, size, figures.FORMATS, _selections(), attention))


stem = figures.slug(ctx.name)
st.download_button(f"The pack: {len(figs)} figures as PNG, SVG and PDF, the tables and a README (zip)", _zip,
                   f"{stem}-figures-{size}.zip", "application/zip", key="zip", type="primary")
with st.expander("One figure at a time"):
    for name, figure in figs.items():
        cols = st.columns([3, 1, 1, 1])
        cols[0].text(name)
        for col, fmt in zip(cols[1:], figures.FORMATS, strict=True):
            col.download_button(fmt.upper(), lambda figure=figure, fmt=fmt: figures.render_all(figure, [fmt], prov)[fmt],
                                f"{name}.{fmt}", figures.MIME[fmt], key=f"{name}.{fmt}")
    if image_id is not None:
        attention = figures.attention_name(data)
        cols = st.columns([3, 1, 1, 1])
        cols[0].text(f"{attention} (attention probabilities, not an attribution)")
        cols[1].download_button("PNG", lambda: stamp(attention, _attention(), prov, describe(
            attention.rsplit(".", 1)[0], data)), attention, "image/png", key=attention)

table_files = figures.table_files(data, prov)


def _download(name: str, label: str, col) -> None:
    col.download_button(label, table_files[name], name, figures.MIME[name.rsplit(".", 1)[1]], key=name)


st.subheader("Table 1")
st.caption(f"Model {md(ctx.run['model'])}, {md(tables.family_text(ctx.run.get('family')))}. The LaTeX needs "
           f"{md(', '.join(latex.PACKAGES))} and fits the line it is put in: table1.tex every metric "
           "(the page's width), one metric at a time for a column.")
markdown, latex_text = tables.summary_markdown(data.summary), latex.table1(data.summary)
per_metric = [f"table1_{m}.tex" for m in tables.metrics_of(data.summary)]
cols = st.columns(3 + len(per_metric))
_download("table1.md", "Markdown", cols[0])
_download("table1.tex", "LaTeX", cols[1])
for col, name in zip(cols[2:], per_metric, strict=False):
    _download(name, f"LaTeX, {tables.METRIC_TITLES[name[7:-4]]}", col)
_download("table1.csv", "CSV", cols[-1])
st.dataframe(tables.table1_style(data.summary), hide_index=True)
with st.expander("Markdown and LaTeX source"):
    st.code(markdown, language="markdown")
    st.code(latex_text, language="latex")

decomposition_files = [n for n in table_files if n.startswith("decomposition_")]
if decomposition_files:
    st.subheader("Decomposition tables")
    st.caption("The Decomposition page's tables over the run's decomposed images (whatever the label above): direct "
               "shares per layer, total, direct and indirect effects, the mean-ablation lab's presets, TextSpan's "
               "texts; a long LaTeX table comes in parts that each fit a page.")
    for stem in dict.fromkeys(n.rsplit(".", 1)[0].split("_part")[0] for n in decomposition_files):
        mine = [n for n in decomposition_files if n.rsplit(".", 1)[0].split("_part")[0] == stem]
        cols = st.columns([2] + [1] * len(mine))
        cols[0].text(stem)
        for col, name in zip(cols[1:], mine, strict=True):
            part = name.rsplit(".", 1)[0].removeprefix(stem).removeprefix("_part").replace("of", " of ")
            _download(name, FORMAT_NAMES[name.rsplit(".", 1)[1]] + (f", part {part}" if part else ""), col)

if data.image_selections is not None and len(data.image_selections):
    st.subheader(f"Figure 5 of image {image_id}")
    f5 = f"image{image_id}_figure5"
    cols = st.columns(3)
    _download(f"{f5}.md", "Markdown", cols[0])
    _download(f"{f5}.tex", "LaTeX", cols[1])
    _download(f"{f5}.csv", "CSV", cols[2])
    st.code(figure5_markdown(tables.select_ablations(data.image_selections, chosen)), language="markdown")
else:
    st.caption("Open an image on the Image page first (or put image=ID in the URL) for its Figure 5 table: the "
               "prompt each ablation selects and the caption that continues it.")

# --------------------------------------------------------------------------------------------------
st.header("Selections")
st.caption("One row per image × ablation. These filters apply to the CSV and Parquet files only.")
row = st.columns(2) + st.columns(2)
ablation = widgets.ablation_select(ctx, "Ablation", "sel_ablation", container=row[0], with_all=True)
outcome = param_select("Outcome", OUTCOMES, "sel_outcome", container=row[1],
                       format_func=lambda o: slices.OUTCOMES[o][1])
sel_label = widgets.label_select("True label", "sel_label", true_labels, container=row[2])
selected_labels = sorted(set(load(queries.prompts, ctx.run_id)["label"]))
selected = widgets.label_select("Selected label", "sel_selected", selected_labels, container=row[3])
where = (slices.ablation(ctx.ablation_id(ablation) if ablation else None, ablation) & slices.outcome(outcome)
         & slices.true_label(sel_label) & slices.selected_label(selected))
n_rows, n_images = load(queries.slice_count, ctx.run_id, ctx.baseline_id, where)
st.caption(f"Current slice: {n_rows:,} selections of {n_images:,} images: {md(where.caption)}.")
preview = load(queries.slice_rows, ctx.run_id, ctx.baseline_id, where, "image", 20, 0)
if tables.has_captions(data.summary):
    st.dataframe(preview, hide_index=True)
    st.caption("The first 20 rows.")
else:  # nothing to show in them: the files keep the columns (the public view's), empty
    st.dataframe(preview.drop(columns=list(CAPTION_COLUMNS), errors="ignore"), hide_index=True)
    st.caption(f"The first 20 rows, without {md_list(CAPTION_COLUMNS)}: this run has no captioner, so the files leave "
               "them empty.")


def _slice_frame():
    with store.connect(ctx.db, read_only=True) as con:
        return figures.selections_frame(con, ctx.run_id, where)


slice_what = f"selections of run {ctx.name}: {where.caption}"
cols = st.columns(2)
cols[0].download_button("CSV", lambda: _slice_frame().to_csv(index=False), f"{stem}-selections-slice.csv",
                        "text/csv", key="slice_csv")
cols[1].download_button("Parquet", lambda: stamp("x.parquet", parquet_bytes(_slice_frame()), prov, slice_what),
                        f"{stem}-selections-slice.parquet", figures.MIME["parquet"], key="slice_parquet")
