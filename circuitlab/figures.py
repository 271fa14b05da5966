"""Figures from a run's results.csv alone (pandas + plotnine; no torch, no model)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import plotnine as p9

from circuitlab.plotting import GROUP_SIGN, head_group_bars, heatmap, layer_position_heatmap, save

RENDERERS: dict[str, Callable[[pd.DataFrame, Path], list[Path]]] = {}


def renderer(method: str):
    def register(fn):
        if method in RENDERERS:
            raise ValueError(f"duplicate figure renderer for {method}")
        RENDERERS[method] = fn
        return fn

    return register


@renderer("activation_patching")
def activation_patching_figures(results: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Whole streams: layer x position heatmaps by stream. Single heads: layer x head heatmaps (all
    positions at once) or head x position heatmaps by layer. Head groups: bar plots. Tracked tokens: layer x
    position heatmaps by token."""
    experiment = results["experiment"].iloc[0]
    heads = results["heads"].fillna("")
    groups = results["group"].fillna("")
    normalized = results["metric"] == "logit_diff_normalized"
    label = "normalised\nlogit diff"
    written: list[Path] = []
    whole = results[normalized & (heads == "")]
    if len(whole):
        plot, w, h = layer_position_heatmap(whole, f"{experiment}: activation patching", label)
        written += save(plot, out_dir, "patching_heatmap", w, h)
    single = results[normalized & (heads != "") & (groups == "")].copy()
    if len(single):
        single["head_label"] = single["heads"]
        if single["position_label"].nunique() == 1:
            single["panel"] = single["stream"] + " · positions " + single["position_label"]
            plot, w, h = heatmap(single, "head_label", "layer", "panel", f"{experiment}: patching each head", label, "head", "layer")
            written += save(plot, out_dir, "head_heatmap", w, h)
        else:
            single["panel"] = single["stream"] + " layer " + single["layer"].astype(str)
            plot, w, h = heatmap(single, "position_label", "head_label", "panel", f"{experiment}: patching each head at each position", label, "position (first prompt's token)", "head")
            written += save(plot, out_dir, "head_position_heatmap", w, h)
    for group in ("leave_one_out", "cumulative"):
        bars = results[normalized & (groups == group)].copy()
        if bars["position_label"].nunique() > 2:
            bars["bar"] = [f"{GROUP_SIGN[group]}head {h}" for h in bars["head"]]
            bars["panel"] = bars["stream"] + " layer " + bars["layer"].astype(str)
            plot, w, h = heatmap(bars, "position_label", "bar", "panel", f"{experiment}: {group.replace('_', '-')} head groups", label, "position (first prompt's token)", "")
            written += save(plot, out_dir, f"heads_{group}", w, h)
        elif len(bars):
            plot, w, h = head_group_bars(bars, f"{experiment}: {group.replace('_', '-')} head groups")
            written += save(plot, out_dir, f"heads_{group}", w, h)
    probs = results[results["metric"].str.startswith("prob:") & (groups == "")].copy()
    if len(probs):
        where = probs["stream"] + probs["heads"].fillna("").map(lambda h: f" head {h}" if h else "")
        probs["token"] = where + " · P(" + probs["metric"].str.removeprefix("prob:") + ")"
        plot, w, h = layer_position_heatmap(probs, f"{experiment}: tracked token probabilities", "probability", facet="token")
        written += save(plot, out_dir, "token_probabilities", w, h)
    return written


@renderer("attribution_patching")
def attribution_patching_figures(results: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Heatmap of the normalised attribution; with the exact run, attribution against exact patching."""
    experiment = results["experiment"].iloc[0]
    written: list[Path] = []
    estimate = results[(results["metric"] == "attribution_normalized")].copy()
    heads = estimate["heads"].fillna("")
    estimate["panel"] = estimate["stream"] + heads.map(lambda h: f" head {h}" if h else "")
    plot, w, h = heatmap(estimate, "position_label", "layer", "panel", f"{experiment}: attribution patching (normalised)",
                         "estimated\nnormalised\nchange", "position (first prompt's token)", "layer")
    written += save(plot, out_dir, "attribution_heatmap", w, h)
    exact = results[results["metric"] == "exact_normalized"]
    if len(exact):
        keys = ["stream", "layer", "heads", "position"]
        both = estimate.merge(exact[keys + ["value"]], on=keys, suffixes=("_attribution", "_exact"))
        r = both.groupby("stream")[["value_attribution", "value_exact"]].corr().iloc[0::2, -1].droplevel(1)
        both["stream_r"] = both["stream"].map(lambda s_: f"{s_} (r = {r[s_]:.2f})")
        plot = (
            p9.ggplot(both, p9.aes("value_exact", "value_attribution"))
            + p9.geom_abline(slope=1, intercept=0, linetype="dashed", color="grey")
            + p9.geom_point(alpha=0.7)
            + p9.facet_wrap("~stream_r")
            + p9.labs(x="exact patching (normalised change)", y="attribution (estimate)", title=f"{experiment}: attribution vs exact patching")
            + p9.theme_minimal()
        )
        written += save(plot, out_dir, "attribution_vs_exact", 4 + 2.5 * both["stream"].nunique(), 4)
    return written


@renderer("path_patching")
def path_patching_figures(results: pd.DataFrame, out_dir: Path) -> list[Path]:
    """The seed's "Path patching results": sender layer x head, the logit diff variation in percent, one
    panel per receiver set; and the attention patterns of the chosen heads when the run saved them."""
    experiment = results["experiment"].iloc[0]
    variation = results[results["metric"] == "logit_diff_variation"].copy()
    variation["value"] = 100 * variation["value"]
    variation["sender"] = [
        f"head {h}" if stream == "z" and heads and "," not in heads else ("mlp" if stream == "mlp_out" else f"heads {heads or 'all'}")
        for stream, h, heads in zip(variation["stream"], variation["head"], variation["heads"].fillna(""))
    ]
    variation["layer"] = variation["layer"].astype(str)
    variation["panel"] = "receiver: " + variation["receiver"].fillna("")
    plot, w, h = heatmap(variation, "layer", "sender", "panel", f"{experiment}: path patching results", "logit diff\nvariation (%)",
                         "sender layer", "sender", cell_format="{:.0f}", min_limit=5.0)
    written = save(plot, out_dir, "path_patching_heatmap", w, h)
    patterns_csv = Path(out_dir).parent / "attention_patterns.csv"
    if patterns_csv.exists():
        written += attention_pattern_figure(pd.read_csv(patterns_csv, keep_default_na=False, dtype={"head": str, "query_label": str, "key_label": str}), out_dir, experiment)
    return written


def attention_pattern_figure(patterns: pd.DataFrame, out_dir: Path, experiment: str) -> list[Path]:
    """Query x key heatmaps of mean attention weights, one facet per head, token labels on both axes."""
    df = patterns.copy()
    order = df.drop_duplicates("query").sort_values("query")["query_label"].tolist()
    df["key_label"] = pd.Categorical(df["key_label"], categories=order, ordered=True)
    df["query_label"] = pd.Categorical(df["query_label"], categories=order[::-1], ordered=True)
    df["head"] = pd.Categorical("head " + df["head"], categories=list(dict.fromkeys("head " + df["head"])), ordered=True)
    n_tokens, n_heads = len(order), df["head"].nunique()
    prompts = f"{df['prompts'].iloc[0]} prompts, mean of {df['n_prompts'].iloc[0]}"
    plot = (
        p9.ggplot(df, p9.aes("key_label", "query_label", fill="weight"))
        + p9.geom_tile()
        + p9.scale_fill_gradient(low="white", high="#08306b", limits=(0, 1), name="attention")
        + p9.facet_wrap("~head", ncol=min(4, n_heads))
        + p9.labs(x="key", y="query", title=f"{experiment}: attention patterns ({prompts})")
        + p9.theme_minimal()
        + p9.theme(axis_text_x=p9.element_text(rotation=90, size=5), axis_text_y=p9.element_text(size=5), panel_grid=p9.element_blank())
    )
    side = max(3.0, 0.09 * n_tokens + 1.5)
    columns = min(4, n_heads)
    rows = -(-n_heads // columns)
    return save(plot, out_dir, "attention_patterns", side * columns + 1.5, side * rows + 1)


@renderer("das")
def das_figures(results: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Seed 000's figures: IIA over layer x position (values in cells) for whole streams swept over several
    positions; IIA by layer, one line per stream, for streams at one position; bars for head groups."""
    experiment = results["experiment"].iloc[0]
    iia = results[results["metric"] == "iia"].copy()
    heads, groups = iia["heads"].fillna(""), iia["group"].fillna("")
    written: list[Path] = []
    whole = iia[(heads == "") | ((groups == "") & (iia["head"].isna()))]
    by_stream = whole.groupby("stream")["position_label"].nunique()
    grid = whole[whole["stream"].map(by_stream) > 1]
    if len(grid):
        plot, w, h = heatmap(grid, "position_label", "layer", "stream", f"{experiment}: interchange intervention accuracy", "IIA",
                             "position (first prompt's token)", "layer")
        written += save(plot, out_dir, "iia_heatmap", w, h)
    lines = whole[whole["stream"].map(by_stream) == 1]
    if len(lines):
        lines["label"] = lines["value"].map(lambda v: f"{v:.2f}")
        plot = (
            p9.ggplot(lines, p9.aes("layer", "value", color="stream"))
            + p9.geom_line()
            + p9.geom_point(size=2)
            + p9.geom_text(p9.aes(label="label"), nudge_y=0.03, size=7, show_legend=False)
            + p9.ylim(0, 1.05)
            + p9.labs(x="layer", y="IIA", title=f"{experiment}: IIA by layer ({lines['position_label'].iloc[0]})")
            + p9.theme_minimal()
        )
        written += save(plot, out_dir, "iia_by_layer", 8, 3.5)
    singles = iia[(heads != "") & (groups == "") & iia["head"].notna()]
    if len(singles):
        singles = singles.assign(head_label=singles["heads"])
        singles["panel"] = singles["stream"] + " · " + singles["position_label"]
        plot, w, h = heatmap(singles, "head_label", "layer", "panel", f"{experiment}: IIA per head", "IIA", "head", "layer")
        written += save(plot, out_dir, "iia_heads", w, h)
    for group in ("leave_one_out", "cumulative"):
        bars = iia[groups == group]
        if len(bars):
            plot, w, h = head_group_bars(bars, f"{experiment}: {group.replace('_', '-')} head groups", y_label="IIA")
            written += save(plot, out_dir, f"iia_heads_{group}", w, h)
    weights_csv = Path(out_dir).parent / "rotation_weights.csv"
    if weights_csv.exists():
        written += rotation_weight_histograms(pd.read_csv(weights_csv), out_dir, experiment)
    return written


def rotation_weight_histograms(weights: pd.DataFrame, out_dir: Path, experiment: str) -> list[Path]:
    """Histograms of the learned basis entries, one panel per head: heads that matter carry large weights."""
    df = weights.copy()
    df["panel"] = "layer " + df["layer"].astype(str) + " · head " + df["head"].astype(str)
    df["panel"] = pd.Categorical(df["panel"], categories=list(dict.fromkeys(df["panel"])), ordered=True)
    plot = (
        p9.ggplot(df, p9.aes("weight"))
        + p9.geom_histogram(bins=30, fill="#3f007d")
        + p9.facet_wrap("~panel")
        + p9.labs(x="learned weight", y="count", title=f"{experiment}: DAS weights on the attention value output, by head")
        + p9.theme_minimal()
    )
    n = df["panel"].nunique()
    return save(plot, out_dir, "rotation_weights", min(16, 3 * min(n, 4) + 1), 2.5 * -(-n // 4) + 1)


@renderer("ablation")
def ablation_figures(results: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Seed 004's picture: the effect of ablating each node against the scale of the patched value, one line
    per node; coloured in / out of the circuit when one is declared (`method.circuit`)."""
    experiment = results["experiment"].iloc[0]
    written = []
    for metric, stem, label in (("effect", "ablation_scales", "effect on the logit difference"),
                                ("output_change", "ablation_output_change", "share of outputs changed (InterpBench)")):
        df = results[results["metric"] == metric].copy()
        if not len(df):
            continue
        heads = df["heads"].fillna("")
        df["node"] = [f"{stream} {layer}" + (f".{h}" if h else "") for stream, layer, h in zip(df["stream"], df["layer"], heads)]
        df["node"] = pd.Categorical(df["node"], categories=list(dict.fromkeys(df["node"])), ordered=True)
        marked = "in_circuit" in df.columns and df["in_circuit"].notna().any()
        if marked:
            df["circuit"] = df["in_circuit"].map({True: "in circuit", False: "not in circuit"}).fillna("no node")
            aes = p9.aes("scale", "value", group="node", color="circuit")
            colours = p9.scale_color_manual(values={"in circuit": "#1a9850", "not in circuit": "#f46d43", "no node": "grey"})
        else:
            aes, colours = p9.aes("scale", "value", color="node"), None
        plot = (
            p9.ggplot(df, aes)
            + p9.geom_hline(yintercept=0, color="grey")
            + p9.geom_line()
            + p9.geom_point(size=1.5)
            + p9.labs(x="scale of the patched value", y=label, color="", title=f"{experiment}: ablation {metric} against scale")
            + p9.theme_minimal()
        )
        written += save(plot + colours if colours is not None else plot, out_dir, stem, 8, 4.5)
    return written


@renderer("direct_attribution")
def direct_attribution_figures(results: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Seed 001's pictures: the logit lens (accumulated residual stream) and the per-layer decomposition as
    lines over the residual stream's order, and per-head direct attribution as a layer x head heatmap."""
    experiment = results["experiment"].iloc[0]
    written: list[Path] = []
    short = {"resid_pre": "pre", "resid_mid": "mid", "resid_post": "post", "attn_out": "attn", "mlp_out": "mlp", "embed": "embed", "pos_embed": "pos"}
    for metric, stem, title, streams in (
        ("logit_lens", "logit_lens", "logit lens (accumulated residual stream)", None),
        ("dla", "layer_attribution", "direct attribution per layer", ("embed", "pos_embed", "attn_out", "mlp_out")),
    ):
        df = results[results["metric"] == metric].copy()
        if streams is not None:
            df = df[df["stream"].isin(streams)]
        if not len(df):
            continue
        df["point"] = [f"{short[s_]} {l}" if s_ not in ("embed", "pos_embed") else short[s_] for s_, l in zip(df["stream"], df["layer"])]
        df["point"] = pd.Categorical(df["point"], categories=list(dict.fromkeys(df["point"])), ordered=True)
        df["label"] = df["value"].map(lambda v: f"{v:.2f}")
        plot = (
            p9.ggplot(df, p9.aes("point", "value", group=1))
            + p9.geom_hline(yintercept=0, color="grey")
            + p9.geom_line(color="#08519c")
            + p9.geom_point(color="#08519c", size=2)
            + p9.geom_text(p9.aes(label="label"), nudge_y=0.04 * max(1.0, float(df["value"].abs().max())), size=7)
            + p9.labs(x="", y="logit difference", title=f"{experiment}: {title}")
            + p9.theme_minimal()
            + p9.theme(axis_text_x=p9.element_text(rotation=45, ha="right"))
        )
        written += save(plot, out_dir, stem, max(6.0, 0.5 * df["point"].nunique() + 2), 3.5)
    heads = results[(results["metric"] == "dla") & (results["stream"] == "head")].copy()
    if len(heads):
        heads["head_label"] = heads["head"].astype(str)
        heads["panel"] = "direct logit attribution"
        plot, w, h = heatmap(heads, "head_label", "layer", "panel", f"{experiment}: per-head direct logit attribution",
                             "logit diff", "head", "layer")
        written += save(plot, out_dir, "head_attribution", w, h)
    return written


def render_run(run_dir: Path) -> list[Path]:
    """(Re)draw every figure of one run directory from its results.csv (a CSV of another layout is skipped
    with a warning)."""
    from circuitlab.results import CSV_COLUMNS, read_results

    results = read_results(run_dir)
    missing = [c for c in CSV_COLUMNS if c not in results.columns]
    if missing:
        warnings.warn(f"{run_dir}: results.csv lacks {', '.join(missing)} (written by an older circuitlab?); no figures drawn", stacklevel=2)
        return []
    written = []
    for method, frame in results.groupby("method", sort=False):
        if method in RENDERERS:
            written += RENDERERS[method](frame, Path(run_dir) / "figures")
    return written


def check_readable(run_dir: Path) -> None:
    """Refuse, in one line naming the file, a run whose results.csv is missing, empty, not UTF-8, truncated (a last
    line cut short, a row with fewer or more fields than the header), of another layout, or holds a value that is not a
    number; or whose manifest.json, when there is one, is not a JSON object."""
    import csv
    import io
    import json

    from circuitlab.errors import CircuitlabError
    from circuitlab.results import CSV_COLUMNS

    path = Path(run_dir) / "results.csv"
    if not path.is_file():
        raise CircuitlabError(f"{path}: missing")
    data = path.read_bytes()
    if not data.strip():
        raise CircuitlabError(f"{path}: empty")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CircuitlabError(f"{path}: not UTF-8 text (byte {err.start}); damaged") from None
    if not text.endswith("\n"):
        raise CircuitlabError(f"{path}: truncated (its last line is cut short)")
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as err:
        raise CircuitlabError(f"{path}: not a CSV file ({err})") from None
    header = rows[0]
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
        raise CircuitlabError(f"{path}: lacks the columns {', '.join(missing)} (another layout, or written by an older circuitlab?)")
    value = header.index("value")
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise CircuitlabError(f"{path}: line {number} has {len(row)} fields, the header {len(header)} (truncated or damaged)")
        try:
            float(row[value] or "nan")
        except ValueError:
            raise CircuitlabError(f"{path}: line {number} has value {row[value][:40]!r}, not a number (damaged)") from None
    manifest = Path(run_dir) / "manifest.json"
    if manifest.exists():
        try:
            parsed = json.loads(manifest.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CircuitlabError(f"{manifest}: damaged, empty or truncated ({type(err).__name__})") from None
        if not isinstance(parsed, dict):
            raise CircuitlabError(f"{manifest}: holds a JSON {type(parsed).__name__}, not an object (damaged)")


def redraw(run_dir: Path) -> list[Path]:
    """`render_run` for `circuitlab figures`: a run that cannot be read or drawn raises CircuitlabError in one line
    (the caller skips it and draws the others)."""
    from circuitlab.errors import CircuitlabError

    check_readable(run_dir)
    try:
        return render_run(run_dir)
    except Exception as err:  # noqa: BLE001  a damaged side table (attention_patterns.csv, ...) or data no figure fits
        message = (str(err).strip().splitlines() or [""])[0][:160]
        raise CircuitlabError(f"{run_dir}: cannot be drawn ({type(err).__name__}: {message})") from None
