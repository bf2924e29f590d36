"""Export: every chart as PNG, SVG and PDF, the current slice of selections as CSV and Parquet, and Table 1
as Markdown and LaTeX. Files are made when a button is pressed, not on every redraw."""

import io
import zipfile

import streamlit as st

from compute import store
from dashboard import figures, queries, slices, tables, ui
from dashboard.state import param_select

OUTCOMES = ["all", "wrong", "right", "flip", "broken", "fixed", "changed"]

ctx = ui.context()
st.title("Export")
st.caption(f"The same figure pack from a shell: `python -m compute export --run {ctx.name} --out DIR "
           f"--db {ctx.db}`")
if ui.no_results(ctx):
    st.stop()

true_labels = list(ui.load(queries.true_labels, ctx.run_id)["label"])
selected_labels = sorted(set(ui.load(queries.prompts, ctx.run_id)["label"]))
row = st.columns(4)
ablation = ui.ablation_select(ctx, "Ablation", "ablation", container=row[0], with_all=True)
outcome = param_select("Outcome", OUTCOMES, "outcome", container=row[1], format_func=lambda o: slices.OUTCOMES[o][1])
label = ui.label_select(ctx, "True label", "label", true_labels, container=row[2])
selected = ui.label_select(ctx, "Selected label", "selected", selected_labels, container=row[3])

image_slice = slices.true_label(label)
where = (slices.ablation(ctx.ablation_id(ablation) if ablation else None, ablation) & slices.outcome(outcome)
         & image_slice & slices.selected_label(selected))
n_rows, n_images = ui.load(queries.slice_count, ctx.run_id, ctx.baseline_id, where)
st.caption(f"Current slice: {n_rows:,} selections of {n_images:,} images: {where.caption}.")


confusion = tuple(dict.fromkeys([ctx.baseline_name, ablation or ctx.baseline_name]))
image_param = st.query_params.get("image", "")
image_id = int(image_param) if image_param.isdigit() else None
# Everything the charts are drawn from, cached; charts are drawn only when a download is asked for.
data = ui.load(figures.pack_data, ctx.run_id, image_slice, confusion, image_id, ablation)
pack = figures.pack_charts(data)


def _slice_frame():
    # Download callbacks run when a button is pressed: they open the store themselves, without st.* calls.
    with store.connect(ctx.db, read_only=True) as con:
        return figures.selections_frame(con, ctx.run_id, where)


st.subheader("Selections")
cols = st.columns(2)
stem = f"{figures.slug(ctx.name)}-selections"
cols[0].download_button("CSV", lambda: _slice_frame().to_csv(index=False), f"{stem}.csv", "text/csv",
                        icon=":material/table:", key="slice_csv")
cols[1].download_button("Parquet", lambda: figures.parquet_bytes(_slice_frame()), f"{stem}.parquet",
                        "application/vnd.apache.parquet", icon=":material/table:", key="slice_parquet")

st.subheader("Table 1")
st.caption(f"Over {image_slice.caption}; model {ctx.run['model']}, {tables.family_text(ctx.run.get('family'))}.")
markdown, latex = tables.summary_markdown(data.summary), tables.summary_latex(data.summary)
cols = st.columns(3)
cols[0].download_button("Markdown", markdown, f"{figures.slug(ctx.name)}-table1.md", "text/markdown", key="md")
cols[1].download_button("LaTeX", latex, f"{figures.slug(ctx.name)}-table1.tex", "application/x-tex", key="tex")
cols[2].download_button("CSV", data.summary.to_csv(index=False), f"{figures.slug(ctx.name)}-table1.csv", "text/csv",
                        key="table_csv")
with st.expander("Preview"):
    st.code(markdown, language="markdown")
    st.code(latex, language="latex")

st.subheader("Figures")
st.caption(f"{len(pack)} charts over {image_slice.caption}; confusion under {' and '.join(data.confusion)}"
           + (f"; the logits and attention maps of image {image_id} (from the URL)" if image_id is not None else "")
           + ".")


attention = f"image{image_id}_attention_{figures.slug(ablation or ctx.baseline_name)}" if image_id is not None else ""


def _attention() -> bytes:
    # The image's attention maps at every layer (the Image page's section), computed from the run's model.
    with store.connect(ctx.db, read_only=True) as con:
        return figures.attention_png(con, ctx.name, image_id, ablation or ctx.baseline_name)


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, build in pack.items():
            for fmt, content in figures.chart_files(build()).items():
                z.writestr(f"{name}.{fmt}", content)
        if attention:
            z.writestr(f"{attention}.png", _attention())
        z.writestr("README.md", figures.pack_readme(ctx.name, ctx.run, sorted(z.namelist())))
    return buf.getvalue()


st.download_button(f"All {len(pack)} charts as PNG, SVG and PDF (zip)", _zip, f"{figures.slug(ctx.name)}-figures.zip",
                   "application/zip", icon=":material/folder_zip:", key="zip", type="primary")
MIME = {"png": "image/png", "svg": "image/svg+xml", "pdf": "application/pdf"}
for name, build in pack.items():
    cols = st.columns([3, 1, 1, 1])
    cols[0].markdown(f"`{name}`")
    for col, fmt in zip(cols[1:], figures.FORMATS, strict=True):
        col.download_button(fmt.upper(), lambda build=build, fmt=fmt: figures.chart_files(build(), [fmt])[fmt],
                            f"{name}.{fmt}", MIME[fmt], key=f"{name}.{fmt}")
if attention:
    cols = st.columns([3, 1, 1, 1])
    cols[0].markdown(f"`{attention}` (attention probabilities, not an attribution)")
    cols[1].download_button("PNG", _attention, f"{attention}.png", "image/png", key="attention.png")
