"""Export: the figure pack with a preview, the ablations it shows (chosen and ordered) and a size for a
paper's column; Table 1 (Markdown, LaTeX with booktabs, CSV) with its preview; an image's Figure 5 table;
the selections of a slice as CSV and Parquet, with filters of their own. Files are made when a button is
pressed, not on every redraw."""

import io
import zipfile

import streamlit as st

from analysis import figures, queries, slices, stats, tables
from analysis.text import md, md_list
from compute import store
from dashboard import widgets
from dashboard.context import context, no_results
from dashboard.reading import load, snapshot
from dashboard.state import get_param, param_multiselect, param_select

OUTCOMES = ["all", "wrong", "right", "flip", "broken", "fixed", "changed"]
MIME = {"png": "image/png", "svg": "image/svg+xml", "pdf": "application/pdf"}
SEP = "|"  # between ablation labels in the URL (labels hold commas, never a bar)

ctx = context()
st.title("Export")
st.caption("The same files from a shell: `python -m compute export --run RUN --out DIR` (see its --help for "
           "--ablations, --size and --image).")
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
size = param_select("Size", list(figures.SIZES), "size", format_func=figures.SIZE_TITLES.get, container=row[1])
label = widgets.label_select("Images with true label", "fig_label", true_labels, container=row[2])
image_slice = slices.true_label(label)
image_param = get_param("image")  # the image and ablation of the Image page, from the URL or this session
image_id = int(image_param) if image_param.isdigit() else None
image_ablation = get_param("ablation")
image_ablation = image_ablation if image_ablation in names else ctx.baseline_name
confusion = tuple(dict.fromkeys([ctx.baseline_name, image_ablation]))
# Everything the charts are drawn from, cached; charts are drawn only for the preview and the downloads.
data = load(figures.pack_data, ctx.run_id, image_slice, confusion, image_id, image_ablation, tuple(chosen))
pack = figures.pack_charts(data)
st.caption(f"{len(pack)} charts of {len(chosen)} ablations over {md(image_slice.caption)}; confusion under "
           f"{md_list(data.confusion)}"
           + (f"; the logits and attention maps of image {image_id}" if image_id is not None else "") + ".")


@st.cache_data(show_spinner="Drawing the preview...", max_entries=32)
def preview_png(db: str, token: tuple, key: tuple, name: str, size: str) -> bytes:
    """The PNG of one chart of the pack (``key``: what the pack was read with, for the cache)."""
    return figures.chart_files(pack[name](), ["png"], size)["png"]


shown = param_select("Preview", list(pack), "preview", container=st.columns([1, 2])[0])
key = (ctx.run_id, image_slice, confusion, image_id, image_ablation, tuple(chosen))
points = figures.SIZES[size]
st.image(preview_png(str(ctx.db), snapshot(), key, shown, size),
         width=round(points * 96 / 72) if points else "stretch",  # a paper size at its printed size
         caption=f"{md(shown)}: {md(figures.SIZE_TITLES[size])}")


attention = f"image{image_id}_attention_{figures.slug(image_ablation)}" if image_id is not None else ""


def _attention() -> bytes:
    # The image's CLS attention maps at every layer (the Image page's section), computed from the run's model.
    with store.connect(ctx.db, read_only=True) as con:
        return figures.attention_png(con, ctx.name, image_id, image_ablation)


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, build in pack.items():
            for fmt, content in figures.chart_files(build(), size=size).items():
                z.writestr(f"{name}.{fmt}", content)
        if attention:
            z.writestr(f"{attention}.png", _attention())
        z.writestr("README.md", figures.pack_readme(ctx.name, ctx.run, sorted(z.namelist())))
    return buf.getvalue()


stem = figures.slug(ctx.name)
st.download_button(f"All {len(pack)} charts as PNG, SVG and PDF (zip)", _zip, f"{stem}-figures-{size}.zip",
                   "application/zip", key="zip", type="primary")
with st.expander("One chart at a time"):
    for name, build in pack.items():
        cols = st.columns([3, 1, 1, 1])
        cols[0].text(name)
        for col, fmt in zip(cols[1:], figures.FORMATS, strict=True):
            col.download_button(fmt.upper(), lambda build=build, fmt=fmt: figures.chart_files(build(), [fmt], size)[fmt],
                                f"{name}.{fmt}", MIME[fmt], key=f"{name}.{fmt}")
    if attention:
        cols = st.columns([3, 1, 1, 1])
        cols[0].text(f"{attention} (attention probabilities, not an attribution)")
        cols[1].download_button("PNG", _attention, f"{attention}.png", "image/png", key="attention.png")

st.subheader("Table 1")
st.caption(f"Model {md(ctx.run['model'])}, {md(tables.family_text(ctx.run.get('family')))}.")
markdown, latex = tables.summary_markdown(data.summary), tables.summary_latex(data.summary)
cols = st.columns(3)
cols[0].download_button("Markdown", markdown, f"{stem}-table1.md", "text/markdown", key="md")
cols[1].download_button("LaTeX (booktabs)", latex, f"{stem}-table1.tex", "application/x-tex", key="tex")
cols[2].download_button("CSV", data.summary.to_csv(index=False), f"{stem}-table1.csv", "text/csv", key="table_csv")
st.dataframe(tables.table1_style(data.summary), hide_index=True)
with st.expander("Markdown and LaTeX source"):
    st.code(markdown, language="markdown")
    st.code(latex, language="latex")

if data.image_selections is not None and len(data.image_selections):
    st.subheader(f"Figure 5 of image {image_id}")
    picks = tables.select_ablations(data.image_selections, chosen)
    f5_md, f5_tex = figures.figure5_markdown(picks), figures.figure5_latex(picks)
    cols = st.columns(3)
    cols[0].download_button("Markdown", f5_md, f"{stem}-image{image_id}-figure5.md", "text/markdown", key="f5_md")
    cols[1].download_button("LaTeX", f5_tex, f"{stem}-image{image_id}-figure5.tex", "application/x-tex", key="f5_tex")
    cols[2].download_button("CSV", picks.to_csv(index=False), f"{stem}-image{image_id}-figure5.csv", "text/csv",
                            key="f5_csv")
    st.code(f5_md, language="markdown")
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
st.dataframe(load(queries.slice_rows, ctx.run_id, ctx.baseline_id, where, "image", 20, 0), hide_index=True)
st.caption("The first 20 rows.")


def _slice_frame():
    # Download callbacks run when a button is pressed: they open the store themselves, without st.* calls.
    with store.connect(ctx.db, read_only=True) as con:
        return figures.selections_frame(con, ctx.run_id, where)


cols = st.columns(2)
cols[0].download_button("CSV", lambda: _slice_frame().to_csv(index=False), f"{stem}-selections.csv", "text/csv",
                        key="slice_csv")
cols[1].download_button("Parquet", lambda: figures.parquet_bytes(_slice_frame()), f"{stem}-selections.parquet",
                        "application/vnd.apache.parquet", key="slice_parquet")
