"""Figures and key numbers at real-model scale, on synthetic run dirs (tests/scale_fixture.py: 42 layers, 16 heads, a
24-token byte-level BPE prompt): every figure within the size policy, readable tokens and every layer in numeric
order in its labels, no text cut off, all-zero columns before the prompts differ left out with a note; the key number
chosen by its stated rule, checked against a plain pandas computation; the templates a run used recorded."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from circuitlab import headline
from circuitlab.figures import plots
from circuitlab.plotting import DPI, MAX_SIDE_PX, drawn, save
from circuitlab.results import read_results
from circuitlab.tokens import position_text, readable_token, token_label
from tests import scale_fixture as fx

CHEAP = {"logit_lens", "layer_attribution", "faithfulness_curve", "circuit", "iia_by_layer", "attention_patterns", "attribution_vs_exact",
         "rotation_weights"}  # the figures without thousands of cell texts: drawn in the fast tier


@pytest.fixture(scope="module")
def scale_runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("scale")
    return {name: build(root) for name, build in fx.BUILDERS.items()}


@pytest.fixture(scope="module")
def figures(scale_runs) -> dict:
    return {name: plots(run_dir) for name, run_dir in scale_runs.items()}


def size_px(plot) -> tuple[float, float]:
    width, height = plot.theme.getp("figure_size")
    return width * DPI, height * DPI


def strings(plot) -> list[str]:
    """Every text a plot's data and labels hold (axis categories, facet names, cell and bar labels, titles)."""
    out = [str(getattr(plot.labels, k)) for k in ("title", "subtitle", "caption", "x", "y") if getattr(plot.labels, k, None)]
    frames = [plot.data] + [layer._data for layer in plot.layers if isinstance(getattr(layer, "_data", None), pd.DataFrame)]
    for frame in frames:
        if isinstance(frame, pd.DataFrame):
            for column in frame.columns:
                if frame[column].dtype == object or isinstance(frame[column].dtype, (pd.CategoricalDtype, pd.StringDtype)):
                    out += [str(v) for v in frame[column].dropna().unique()]
    return out


def test_tokens_read_as_a_reader_writes_them():
    assert readable_token("Ġwas") == " was" and readable_token("▁was") == " was" and readable_token("Ċ") == "\n"
    assert readable_token("<0x0A>") == "\n" and readable_token("<0xE2><0x80><0x94>") == "—" and readable_token("Ã©") == "é"
    assert readable_token("café") == "café" and readable_token("<|im_start|>") == "<|im_start|>"  # not byte-level: as it is
    assert [token_label(t) for t in ("Ġwas", "Ġ", "ĊĊ", "ĉ", "")] == ["was", "␣", "↵↵", "⇥", "∅"]
    assert token_label("Ġsupercalifragilistic") == "supercalifrag…"
    assert position_text("3:Ġwas") == "3:was" and position_text("END") == "END" and position_text("0-16") == "0-16"
    for token in ("Ġwas", "Ċ", "▁was", "Ã©"):
        assert token_label(token_label(token)) == token_label(token)  # applying it twice changes nothing


@pytest.mark.parametrize("method", sorted(fx.BUILDERS))
def test_every_figure_keeps_the_size_policy_at_scale(figures, method):
    assert figures[method], method
    for stem, plot in figures[method].items():
        width, height = size_px(plot)
        assert width <= MAX_SIDE_PX and height <= MAX_SIDE_PX, (method, stem, width, height)


def test_a_saved_png_has_the_size_save_was_given_and_never_more_than_the_policy(tmp_path, figures):
    from PIL import Image

    plot = figures["direct_attribution"]["logit_lens"]
    save(plot, tmp_path, "lens", 7.0, 4.0)
    save(plot, tmp_path, "huge", 60.0, 4.0)  # a figure asked to be larger than the policy is drawn at its limit
    with Image.open(tmp_path / "lens.png") as lens, Image.open(tmp_path / "huge.png") as huge:
        assert lens.size == (7 * DPI, 4 * DPI)
        assert huge.size[0] <= MAX_SIDE_PX


def test_labels_are_readable_tokens_with_their_roles(figures):
    for method, drawn_plots in figures.items():
        for stem, plot in drawn_plots.items():
            raw = [s for s in strings(plot) if any(marker in s for marker in fx.RAW_MARKERS)]
            assert not raw, (method, stem, raw[:3])
    pages = {stem: plot for stem, plot in figures["activation_patching"].items() if stem.startswith("head_position_heatmap")}
    positions = list(pages["head_position_heatmap"].data["position_label"].cat.categories)
    assert positions[0] == f"{fx.FIRST_DIFFERENCE}:John (S2)" and positions[-1] == f"{fx.N_POSITIONS - 1}:named (END)"
    assert "17:supercalifrag…" in positions  # a long token cut short, not the whole BPE piece
    patterns = figures["path_patching"]["attention_patterns"].data
    assert "10:↵" in set(patterns["key_label"]) and "2:Mary (IO)" in set(patterns["key_label"])


def test_all_zero_columns_before_the_prompts_differ_are_left_out_with_a_note(figures):
    for stem in ("patching_heatmap", "head_position_heatmap"):
        plot = figures["activation_patching"][stem]
        shown = [str(c).split(":")[0] for c in plot.data["position_label"].cat.categories]
        assert shown == [str(i) for i in range(fx.FIRST_DIFFERENCE, fx.N_POSITIONS)], stem
        assert f"positions 0–{fx.FIRST_DIFFERENCE - 1} not drawn" in plot.labels.subtitle
        assert f"first differ at position {fx.FIRST_DIFFERENCE}" in plot.labels.subtitle
    probabilities_or_iia = figures["das"]["iia_heatmap"].data["position_label"].cat.categories
    assert list(probabilities_or_iia) == list(fx.ROLES)  # named positions all stay, zeros or not


def test_every_layer_appears_once_in_numeric_order_across_pages(figures):
    pages = [plot for stem, plot in sorted(figures["activation_patching"].items(), key=lambda kv: kv[0]) if stem.startswith("head_position_heatmap")]
    assert len(pages) > 1  # 42 layers of 16 heads x 13 positions do not fit one page
    panels = [panel for plot in sorted(pages, key=lambda p: int(re.search(r"page (\d+)", p.labels.title).group(1)))
              for panel in plot.data["panel"].cat.categories]
    assert panels == [f"z layer {layer}" for layer in range(fx.N_LAYERS)]
    path = figures["path_patching"]["path_patching_heatmap"].data
    assert list(path["layer"].cat.categories) == list(range(fx.N_LAYERS - 2))  # 0, 1, 2, ..., 10: not 0, 1, 10, 11
    heads = figures["direct_attribution"]["head_attribution"].data
    assert list(heads["layer"].cat.categories) == list(range(fx.N_LAYERS))[::-1] and list(heads["head_label"].cat.categories) == list(range(fx.N_HEADS))


def test_the_lighter_figures_are_drawn_with_no_text_cut_off(figures):
    for method, drawn_plots in figures.items():
        for stem, plot in drawn_plots.items():
            if stem not in CHEAP:
                continue
            seen = drawn(plot)
            assert seen["width"] <= MAX_SIDE_PX and seen["height"] <= MAX_SIDE_PX, (method, stem)
            assert not seen["outside"], (method, stem, seen["outside"])
            assert not [t for t in seen["texts"] if any(m in t for m in fx.RAW_MARKERS)], (method, stem)


@pytest.mark.slow
def test_every_figure_and_page_is_drawn_within_the_policy_with_no_text_cut_off(figures):
    for method, drawn_plots in figures.items():
        for stem, plot in drawn_plots.items():
            seen = drawn(plot)
            assert seen["width"] <= MAX_SIDE_PX and seen["height"] <= MAX_SIDE_PX, (method, stem)
            assert not seen["outside"], (method, stem, seen["outside"])
            assert not [t for t in seen["texts"] if any(m in t for m in fx.RAW_MARKERS)], (method, stem)


# --- the key number ------------------------------------------------------------------------------------------------

def key(scale_runs, method):
    return headline.key_number(read_results(scale_runs[method]), method, scale_runs[method])


def test_key_number_leaves_out_what_is_large_by_construction(scale_runs):
    results = read_results(scale_runs["activation_patching"])
    rows = results[results["metric"] == "logit_diff_normalized"]
    components = rows[~rows["stream"].isin(["resid_pre", "resid_mid", "resid_post"]) & (rows["group"].fillna("") == "")]
    moved = components[components["position"] != str(fx.FIRST_DIFFERENCE)]  # plain pandas: not at the changed token
    expected = moved.loc[moved["value"].abs().idxmax()]
    got = headline.key_number(rows[rows["group"].fillna("") == ""], "activation_patching", scale_runs["activation_patching"])
    assert got["value"] == pytest.approx(expected["value"]) and got["value"] < rows["value"].abs().max()
    assert "residual stream" in got["rule"] and "prompts differ" in got["rule"]
    assert f"L{expected['layer']}" in got["where"]
    assert "(position" in got["where"] or "END" in got["where"]


def test_key_number_rules_per_kind(scale_runs):
    results = read_results(scale_runs["das"])
    stream = results[results["stream"] == "block_output"]  # the residual stream alone, at IO, S1, S2, END: where it arrives at END
    das = headline.key_number(stream, "das", scale_runs["das"])
    end = stream[stream["position"] == "END"].sort_values("layer")
    first = end[end["value"] >= 0.5 * end["value"].max()].iloc[0]
    assert "first layer" in das["rule"] and das["value"] == pytest.approx(first["value"]) and f"L{first['layer']}" in das["where"]
    ablation = key(scale_runs, "ablation")
    results = read_results(scale_runs["ablation"])
    plain = results[results["scale"] == 1.0]
    assert ablation["value"] == pytest.approx(plain.loc[plain["value"].abs().idxmax(), "value"]) and "scale 1" in ablation["rule"]
    eap = key(scale_runs, "eap")
    assert eap["metric"] == "faithfulness" and eap["value"] == pytest.approx(0.62) and "7 edges" in eap["where"]
    results = read_results(scale_runs["activation_patching"])
    loo = results[results["group"] == "leave_one_out"]
    got = headline.key_number(loo, "activation_patching")
    assert got["value"] == pytest.approx(loo["value"].min()) and "removal" in got["rule"]


def test_ioi_templates_are_recorded_and_the_held_out_split_is_said():
    from circuitlab import cli
    from circuitlab.run import templates_used
    from circuitlab.tasks import ioi

    default = templates_used(cli.compose_config(["+experiment=ioi_dla"]))  # templates: all, split: test (the task's defaults)
    assert list(default["templates"]) == ["later"] and "held-out" in default["note"] and "split=all" in default["note"]
    named = templates_used(cli.compose_config(["+experiment=ioi_patching_named"]))  # split: all
    assert list(named["templates"]) == list(ioi.TEMPLATES)
    when = templates_used(cli.compose_config(["+experiment=ioi_patching"]))
    assert when["templates"] == {"when": ioi.TEMPLATES["when"]}
    das = templates_used(cli.compose_config(["+experiment=ioi_position"]))
    assert set(das["templates"]).isdisjoint(das["train_templates"]) and set(das["templates"]) | set(das["train_templates"]) == set(ioi.TEMPLATES)


@pytest.mark.parametrize("nan_cells", [6, 2, 0])
def test_nan_cells_are_said_in_the_subtitle(nan_cells):
    """A heatmap whose values are NaN (a degenerate baseline gap) says so: all of them, or how many."""
    import math

    from circuitlab.heatmaps import heatmap

    values = [math.nan] * nan_cells + [0.5] * (6 - nan_cells)
    frame = pd.DataFrame({"layer": [0, 0, 0, 1, 1, 1], "position_label": ["0", "1", "2"] * 2, "stream": "resid_pre", "value": values})
    (plot, _, _), = heatmap(frame, "position_label", "layer", "stream", "t", "v", "position", "layer")
    subtitle = plot.labels.subtitle or ""
    if nan_cells == 6:
        assert "every value is NaN" in subtitle and "baseline_gap" in subtitle
    elif nan_cells:
        assert f"{nan_cells} of 6 values are NaN" in subtitle
    else:
        assert "NaN" not in subtitle
    shown = drawn(plot)
    assert not shown["outside"] and (nan_cells == 0 or any("NaN" in t for t in shown["texts"]))
