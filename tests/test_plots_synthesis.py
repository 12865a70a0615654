import io

import pytest
import torch
from PIL import Image

from dfkd_core.plots import (bn_statistics_figure, class_columns, image_grid_figure, image_grid_png, loss_curves_figure,
                             parse_snapshot_label, run_comparison_figure)
from dfkd_core.plots.grids import RIGHT, WRONG, caption


def test_snapshot_labels_parse_with_spaces_in_class_names():
    assert parse_snapshot_label("Ankle boot → Sneaker 0.55") == ("Ankle boot", "Sneaker", 0.55)
    assert parse_snapshot_label("3 → 3 1.00") == ("3", "3", 1.0)
    assert parse_snapshot_label("just a name") is None
    assert caption("Ankle boot → Ankle boot 0.97") == ("Ankl…\u200297%", RIGHT)
    assert caption("3 → 8 0.41") == ("8\u200241%", WRONG)
    assert caption("7 → 7 0.999") == ("7\u2002100%", RIGHT)


def test_grid_png_layout_and_pixels():
    images = torch.zeros(12, 1, 8, 8)
    images[0] = 1.0  # first cell white
    png = image_grid_png(images, ncols=5, max_rows=2, min_cell=16)  # 10 of 12 drawn, 8 px upscaled x2
    grid = Image.open(io.BytesIO(png))
    pad, cell = 4, 16
    assert grid.size == (5 * (cell + pad) + pad, 2 * (cell + pad) + pad)
    assert grid.getpixel((pad + 3, pad + 3)) == (255, 255, 255)           # cell 0: white image
    assert grid.getpixel((pad + cell + pad + 3, pad + 3)) == (0, 0, 0)     # cell 1: black image
    labelled = Image.open(io.BytesIO(image_grid_png(images[:2], ["1 → 1 0.90", "1 → 2 0.60"], ncols=2,
                                                    min_cell=16, column_titles=["a", "b"])))
    assert labelled.size[1] == 18 + (cell + 16 + pad) + pad  # header band + caption band
    colours = {labelled.getpixel((x, y)) for x in range(labelled.size[0]) for y in range(labelled.size[1])}
    assert any(c[1] > c[0] + 60 for c in colours) and any(c[0] > c[1] + 60 for c in colours)  # green and red


def test_a_one_image_grid_keeps_its_own_small_width():
    fig = image_grid_figure(torch.rand(1, 1, 8, 8), ["3 → 3 0.9"])
    assert fig.layout.width == 200   # a 64-px cell on a 200-px figure, not the page's full width


def test_grid_figure_has_hover_labels():
    labels = ["a → a 0.9", "a → b 0.5", "b → b 0.7", "b → a 0.6"]
    fig = image_grid_figure(torch.rand(4, 3, 8, 8), labels, ncols=2)
    hover = [t for t in fig.data if t.type == "scatter" and t.hovertext is not None][0]
    assert list(hover.hovertext) == ["a → a 0.9", "a → b 0.5", "b → b 0.7", "b → a 0.6"]
    # One caption trace per colour, which a selection (a click in the one-image view) does not fade.
    texts = [t for t in fig.data if t.type == "scatter" and t.mode == "text"]
    colour_at = {(x, y): t.textfont.color for t in texts for x, y in zip(t.x, t.y)}
    assert [colour_at[p] for p in sorted(colour_at, key=lambda p: (p[1], p[0]))] == [RIGHT, WRONG, RIGHT, WRONG]
    assert all(t.unselected.textfont.color == t.textfont.color for t in texts)


def test_loss_curves_mark_live_updates_at_their_step():
    history = [{"step": i, "loss_total": 10.0 - i, "loss_ce": 1.0, "loss_tv": 0.0, "teacher_accuracy": i / 10}
               for i in range(10)]
    fig = loss_curves_figure(history, [{"step": 4, "alpha_f": 0.5}, {"step": 7, "flip": True}])
    names = [t.name for t in fig.data]
    assert names == ["total", "CE", "R_TV", "teacher accuracy"]
    assert len(fig.data[2].x) == 0  # an all-zero term has nothing to show on a log axis
    assert [s.x0 for s in fig.layout.shapes] == [4, 4, 7, 7]  # through the loss and the accuracy panel
    assert [a.text for a in fig.layout.annotations] == ["α_f=0.5", "flip=True"]
    assert fig.layout.yaxis.dtick == 1 and fig.layout.yaxis.exponentformat == "power"   # 10⁰, 10¹: no "5, 2"
    # a loss within one decade (a teacher's, 0.9 → 0.2) would get no tick at all with one tick per decade
    teacher = loss_curves_figure([{"step": i, "loss": 0.9 - 0.07 * i, "test_accuracy": 0.1 + 0.09 * i}
                                  for i in range(10)], keys=("loss",), accuracy_keys=("test_accuracy",))
    assert teacher.layout.yaxis.dtick is None and teacher.layout.yaxis.type == "log"
    thinned = loss_curves_figure([{"step": i, "loss_total": 1.0 + i} for i in range(1001)], max_points=100)
    assert len(thinned.data[0].x) <= 101 and thinned.data[0].x[-1] == 1000


def test_labels_of_close_changes_are_stacked_above_the_plot_not_overlapping():
    history = [{"step": i, "loss_total": 1.0} for i in range(200)]
    updates = [{"step": 50, "alpha_f": 0.5}, {"step": 52, "alpha_tv": 0.1}, {"step": 54, "lr": 0.2},
               {"step": 150, "alpha_f": 1.0}, {"step": 199, "alpha_tv": 0.3}]
    figure = loss_curves_figure(history, iter(updates))
    notes = figure.layout.annotations
    assert all(a.y == 1.0 and a.yanchor == "bottom" and a.textangle is None for a in notes)   # above the curves
    shifts = [a.yshift for a in notes]
    assert len(set(shifts[:3])) == 3       # three changes 2 steps apart: three rows
    assert shifts[3] == shifts[0]          # far from the others: back to the row nearest the plot
    assert figure.layout.margin.t >= max(shifts) + 16   # room for the highest row
    assert notes[4].xanchor == "right" and notes[0].xanchor == "center"   # the last step's label stays inside


def test_bn_figure_states_each_layers_distance():
    stats = [{"layer": "bn1", "batch_mean": torch.tensor([1.0, 2.0]), "batch_var": torch.tensor([1.0, 1.0]),
              "running_mean": torch.tensor([1.0, 0.0]), "running_var": torch.tensor([4.0, 5.0])},
             {"layer": "bn2", "batch_mean": torch.zeros(3), "batch_var": torch.ones(3),
              "running_mean": torch.zeros(3), "running_var": torch.ones(3)}]
    fig = bn_statistics_figure(stats)
    # bn1: ||(0, 2)|| + ||(-3, -4)|| = 2 + 5 = 7; bn2 matches exactly
    assert [a.text for a in fig.layout.annotations] == ["bn1<br>d=7.00", "bn2<br>d=0.00"]
    assert list(fig.data[1].y) == [1.0, 2.0, None, 0.0, 0.0, 0.0, None]  # batch means, gaps between layers
    targets_only = bn_statistics_figure([{k: v for k, v in s.items() if not k.startswith("batch")} for s in stats])
    assert len(targets_only.data) == 2 and [a.text for a in targets_only.layout.annotations] == ["bn1", "bn2"]


def test_run_comparison_one_panel_per_metric():
    a = [{"step": i, "loss_total": 2.0, "teacher_accuracy": 0.5} for i in range(5)]
    b = [{"step": i, "loss_total": 1.0, "teacher_accuracy": 0.9} for i in range(3)]
    fig = run_comparison_figure({"a": a, "b": b}, ["loss_total", "teacher_accuracy"], {"a": [{"step": 2}]})
    assert len(fig.data) == 4 and fig.layout.yaxis.type == "log" and fig.layout.yaxis2.type != "log"
    assert [s.x0 for s in fig.layout.shapes] == [2, 2]  # through both panels
    with pytest.raises(KeyError):
        run_comparison_figure({"a": a}, ["loss_total"], {"a": [{}]})


def test_class_columns_align_cycled_targets():
    names = [str(k) for k in range(10)]
    assert class_columns(list(range(10)) * 3, names) == (10, names)
    assert class_columns([3] * 7, names) == (10, ["3"] * 10)
    assert class_columns([2, 5, 7] * 4, names) == (9, ["2", "5", "7"] * 3)
    assert class_columns([1, 2, 2, 1], names) == (10, None)  # not a cycle: no titles
    assert class_columns(list(range(12)), [str(k) for k in range(12)]) == (10, None)


def test_a_curve_has_the_same_colour_whichever_other_curves_are_drawn():
    """Synthesize draws every loss term, Runs one fewer: by trace order, teacher accuracy changed colour between them."""
    history = [{"step": i, "loss_total": 1.0 / (i + 1), "loss_tv": 0.5, "loss_ce": 0.2, "teacher_accuracy": 0.5,
                "mean_confidence": 0.7} for i in range(5)]

    def colours(keys):
        figure = loss_curves_figure(history, keys=keys)
        return {trace.name: trace.line.color for trace in figure.data}

    every, fewer = colours(["loss_total", "loss_ce", "loss_tv"]), colours(["loss_total", "loss_tv"])
    assert every["teacher accuracy"] == fewer["teacher accuracy"] != every["mean confidence"]
    assert every["R_TV"] == fewer["R_TV"] and len(set(every.values())) == len(every)


def test_a_curve_breaks_across_another_phase_but_not_between_interleaved_steps():
    from dfkd_core.plots.synthesis import _series
    # A continual run: phase "old" (loss_a), then "new" (loss_b), then "old" again: loss_a is not drawn across "new".
    rows = ([{"step": i, "phase": "old", "loss_a": 1.0} for i in range(100)]
            + [{"step": 100 + i, "phase": "new", "loss_b": 1.0} for i in range(100)]
            + [{"step": 200 + i, "phase": "old", "loss_a": 2.0} for i in range(50)])
    xs, ys = _series(rows, "loss_a")
    assert ys.count(None) == 1 and xs[ys.index(None)] == 200
    # Trajectory KD: a student step after every inversion iteration stays one line.
    interleaved = [{"step": i, "phase": "synthesis" if i % 2 == 0 else "kd", **({"loss_kd": 1.0} if i % 2 else {})}
                   for i in range(200)]
    assert None not in _series(interleaved, "loss_kd")[1]
    figure = loss_curves_figure(rows, keys=["loss_a", "loss_b"])   # a gap on a log axis draws
    assert None in figure.data[0].y


def test_every_class_named_axis_names_every_class_even_digits():
    """Digits' class names '0'…'9' made plotly draw a numeric axis labelled 0, 2, 4, 6, 8."""
    from dfkd_core.plots.applications import continual_per_class_figure
    from dfkd_core.plots.boundary import per_class_figure
    from dfkd_core.plots.distill import per_class_accuracy_figure
    from dfkd_core.plots.inspect import class_probability_figure
    from dfkd_core.stats import wilson_interval
    names = [str(k) for k in range(10)]
    figures = [
        per_class_accuracy_figure({"student": [wilson_interval(30, 36)] * 10}, names),
        class_probability_figure([0.1] * 10, names, target=3),
        continual_per_class_figure([{"model": "replay", "per_class": [0.9] * 10, "old_classes": 5}], names),
        per_class_figure({"s": {str(k): {"magsim": 0.5, "angsim": 0.6, "both_accepted": 200, "pairs": 300}
                                for k in range(10)}}, names)]
    for figure in figures:
        axes = [figure.layout[name] for name in figure.layout if name.startswith("xaxis")]
        assert axes and all(axis.type == "category" for axis in axes), figure.layout.title.text


def test_curves_with_no_loss_are_one_accuracy_panel_not_a_blank_one_above_it():
    history = [{"step": s, "teacher_accuracy": 0.5, "mean_confidence": 0.6} for s in range(5)]
    figure = loss_curves_figure(history, keys=[], accuracy_keys=("teacher_accuracy", "mean_confidence"))
    assert "yaxis2" not in figure.layout and figure.layout.yaxis.title.text == "on batch"
    assert figure.layout.yaxis.type != "log" and len(figure.data) == 2
    both = loss_curves_figure([{**row, "loss_total": 1.0 + row["step"]} for row in history])
    assert both.layout.yaxis.type == "log" and both.layout.yaxis2.title.text == "on batch"


def test_a_slider_stepped_with_the_keyboard_is_one_marker_with_its_final_value():
    history = [{"step": i, "loss_total": 1.0} for i in range(200)]
    updates = [{"step": 40, "alpha_tv": 0.003}, {"step": 41, "alpha_tv": 0.01}, {"step": 43, "alpha_tv": 0.03},
               {"step": 44, "lr": 0.2}, {"step": 150, "alpha_tv": 0.1}]
    notes = loss_curves_figure(history, iter(updates)).layout.annotations
    assert [(a.x, a.text) for a in notes] == [(40, "α_tv=0.03 (3 moves)"), (44, "lr=0.2"), (150, "α_tv=0.1")]
    assert notes[0].hovertext.count("step ") == 3 and "step 41: α_tv=0.01" in notes[0].hovertext


def test_the_kd_loss_chart_before_any_kd_step_says_so_instead_of_an_empty_log_axis():
    from dfkd_core.plots.distill import kd_loss_figure
    empty = kd_loss_figure([{"phase": "synthesis", "step": 0}])
    assert not empty.data and "no KD step yet" in empty.layout.annotations[0].text
    assert empty.layout.yaxis.type != "log" and empty.layout.yaxis.showticklabels is False
    drawn = kd_loss_figure([{"phase": "kd", "student_steps": s, "loss_kd": 1.0 / (s + 1)} for s in range(10)])
    assert drawn.layout.yaxis.type == "log" and drawn.layout.yaxis.dtick == "D2" and not drawn.layout.annotations


def test_the_target_class_is_named_above_its_bar_even_at_probability_zero():
    from dfkd_core.plots.inspect import class_probability_figure
    figure = class_probability_figure([0.0, 0.99, 0.01], ["a", "b", "c"], target=0)
    (note,) = figure.layout.annotations
    assert (note.x, note.y, note.text) == ("a", 0.0, "target")
    assert not class_probability_figure([0.0, 1.0], ["a", "b"]).layout.annotations


def test_a_sure_but_wrong_batch_is_called_collapsed_only_when_it_lasts():
    from dfkd_core.synthesis.diagnosis import PERSISTENT_STEPS, persistent_note
    collapsed = {"teacher_accuracy": 0.11, "mean_confidence": 0.98}
    forming = {"teacher_accuracy": 0.11, "mean_confidence": 0.30}   # early noise: wrong and unsure
    note = persistent_note([collapsed] * PERSISTENT_STEPS)
    assert "only 11% of these images their target class, though it is sure of them (0.98)" in note
    assert "collapsed" in note
    assert persistent_note([collapsed] * (PERSISTENT_STEPS - 1)) == ""
    assert persistent_note([collapsed] * (PERSISTENT_STEPS - 1) + [forming]) == ""
    assert persistent_note([{"teacher_accuracy": 0.95, "mean_confidence": 0.9}] * 50) == ""


def test_a_bn_term_that_drowns_the_class_term_is_named_with_its_weights():
    from dfkd_core.synthesis.diagnosis import PERSISTENT_STEPS, class_agreement_note, persistent_note
    # The last step of a ResNet-18 batch at α_f = 1: R_feature 120.2, CE 6.78, 16% of the batch given its class.
    drowned = {"teacher_accuracy": 0.16, "mean_confidence": 0.6, "loss_ce": 6.78, "loss_bn_feature": 120.2,
               "alpha_ce": 1.0, "alpha_f": 1.0}
    note = persistent_note([drowned] * PERSISTENT_STEPS)   # unsure, but the cause is the weights: said live too
    assert "the BN term (α_f·R_feature = 120) is 18× the class term (α_ce·CE = 6.78)" in note and "Lower α_f" in note
    # The same losses at α_f 0.1: 12.0 against 6.78 is no longer dominance; unsure, not named live.
    assert "BN term" not in class_agreement_note(0.16, 0.6, 6.78, 120.2, alpha_f=0.1)
    assert persistent_note([{**drowned, "alpha_f": 0.1}] * PERSISTENT_STEPS) == ""
    assert class_agreement_note(0.5, 0.6, 6.78, 120.2, alpha_f=1.0) == ""   # half given their class: no note


def test_accuracy_against_images_made_shows_how_far_each_count_took_the_student():
    from dfkd_core.plots.distill import accuracy_curves_figure
    curve = [{"images_synthesized": n, "student_steps": s, "student_accuracy": a}
             for n, s, a in [(0, 0, 0.1), (0, 20, 0.4), (0, 40, 0.6), (200, 60, 0.62), (200, 80, 0.72), (400, 100, 0.9)]]
    by_images = accuracy_curves_figure({"run": curve}, "images_synthesized").data[0]
    assert list(by_images.x) == [0, 200, 400] and list(by_images.y) == [0.6, 0.72, 0.9]   # no columns of dots
    by_steps = accuracy_curves_figure({"run": curve}, "student_steps").data[0]
    assert len(by_steps.x) == 6   # every evaluation against the steps


def test_weighted_curves_show_what_each_term_adds_to_the_total():
    from dfkd_core.plots.synthesis import loss_curves_figure
    history = [{"step": i, "loss_tv": 500.0, "alpha_tv": 0.001, "loss_ce": 2.0, "alpha_ce": 1.0,
                "loss_total": 2.5, "teacher_accuracy": 0.5} for i in range(3)]
    plain = {t.name: t.y for t in loss_curves_figure(history).data}
    weighted = {t.name: t.y for t in loss_curves_figure(history, weighted=True).data}
    assert list(plain["R_TV"]) == [500.0] * 3 and list(weighted["α_tv·R_TV"]) == [0.5] * 3
    assert list(weighted["α_ce·CE"]) == [2.0] * 3 and list(weighted["total"]) == [2.5] * 3
