"""MagSim / AngSim (methods.md#bss): hand-computed pairs, exact geometry of linear models, real digits models, CLI."""
import copy
import json
import math
from pathlib import Path

import pytest
import torch

from dfkd_core.analysis.boundary import (MIN_PAIRS, BasePairs, angle_similarity, boundary_similarity,
                                         choose_base_pairs, clipped_cosine, compare_students,
                                         decision_boundary_similarity, magnitude_ratio, magnitude_similarity,
                                         paired_differences)
from dfkd_core.synthesis.bss import (ACCEPTED, REJECTED_MAX_STEPS, AttackSettings, BoundaryAttackResult,
                                     select_base_samples)

from hand_models import LinearClassifier, row_images as images


NEWTON = AttackSettings(eta=1.0, max_steps=5)


def fake_attack(adversarial_rows, outcomes):
    adv = torch.tensor(adversarial_rows, dtype=torch.float64).view(len(adversarial_rows), 1, 1, -1)
    n = len(outcomes)
    zeros = torch.zeros(n, dtype=torch.long)
    return BoundaryAttackResult(adv, torch.tensor(outcomes), zeros, zeros, torch.zeros(n), zeros)


def hand_pairs(weights):
    return BasePairs(inputs=torch.zeros(2, 1, 1, 2, dtype=torch.float64), labels=torch.tensor([0, 1]),
                     source_index=torch.tensor([0, 1]), pair_base=torch.tensor([0, 0, 1]),
                     pair_target=torch.tensor([1, 2, 0]), pair_weight=torch.tensor(weights))


def test_weighted_similarities_by_hand():
    # Pairs (teacher x̄, student x̄, p): ((1,0),(2,0),.25): ratio .5 cos 1; ((0,1),(1,0),.75): ratio 1 cos 0;
    # ((0,2),(0,-1),1): ratio .5, cos −1 → 0.  MagSim = (.125 + .75 + .5)/2 = .6875; AngSim = .25/2 = .125.
    teacher = fake_attack([[1, 0], [0, 1], [0, 2]], [ACCEPTED] * 3)
    student = fake_attack([[2, 0], [1, 0], [0, -1]], [ACCEPTED] * 3)
    result = boundary_similarity(hand_pairs([.25, .75, 1.0]), teacher, student)
    assert (result.magsim, result.angsim) == (pytest.approx(0.6875), pytest.approx(0.125))
    assert result.per_class[0]["magsim"] == pytest.approx(0.875) and result.per_class[0]["angsim"] == pytest.approx(.25)
    assert result.per_class[1]["magsim"] == pytest.approx(0.5) and result.per_class[1]["angsim"] == 0.0
    assert result.both_accepted == 3 and result.per_class[0]["both_accepted"] == 2
    # Weights only matter relative to each other.
    tripled = boundary_similarity(hand_pairs([.75, 2.25, 3.0]), teacher, student)
    assert (tripled.magsim, tripled.angsim) == (pytest.approx(0.6875), pytest.approx(0.125))
    # A pair the student did not cross drops out of both sums (numerator and total weight):
    # MagSim = (.25·.5 + 1·.5)/1.25 = .5, AngSim = .25/1.25 = .2.
    student_rejects = fake_attack([[2, 0], [1, 0], [0, -1]], [ACCEPTED, REJECTED_MAX_STEPS, ACCEPTED])
    partial = boundary_similarity(hand_pairs([.25, .75, 1.0]), teacher, student_rejects)
    assert (partial.magsim, partial.angsim) == (pytest.approx(0.5), pytest.approx(0.2))
    assert (partial.teacher_accepted, partial.student_accepted, partial.both_accepted) == (3, 2, 2)
    assert partial.student_outcomes == {"accepted": 2, "rejected_third_class": 0, "rejected_max_steps": 1}
    assert partial.pair_data["cosine"].tolist() == pytest.approx([1.0, 0.0, 0.0])


def test_intervals_resample_base_samples_not_pairs():
    # Same pairs as above. Per base sample: a = (.25·.5 + .75·1, 1·.5) = (.875, .5) for MagSim, b = (1, 1).
    # Resampling base samples gives only .875, .6875 or .5: the interval cannot leave [.5, .875].
    teacher = fake_attack([[1, 0], [0, 1], [0, 2]], [ACCEPTED] * 3)
    student = fake_attack([[2, 0], [1, 0], [0, -1]], [ACCEPTED] * 3)
    result = boundary_similarity(hand_pairs([.25, .75, 1.0]), teacher, student)
    assert result.pair_data["base_magsim"].tolist() == pytest.approx([0.875, 0.5])
    assert result.pair_data["base_weight"].tolist() == [1.0, 1.0]
    interval = result.magsim_interval
    assert interval.units == 2 and interval.estimate == result.magsim == pytest.approx(0.6875)
    assert 0.5 <= interval.low <= interval.high <= 0.875
    assert result.too_few_pairs and "rests on only 3 pairs" in result.note
    assert result.to_dict()["angsim_interval"]["units"] == 2


def test_paired_difference_of_two_students_on_the_same_base_samples():
    # Student A = the hand case (MagSim .6875); student B crosses exactly where the teacher does (MagSim 1).
    pairs = hand_pairs([.25, .75, 1.0])
    teacher = fake_attack([[1, 0], [0, 1], [0, 2]], [ACCEPTED] * 3)
    a = boundary_similarity(pairs, teacher, fake_attack([[2, 0], [1, 0], [0, -1]], [ACCEPTED] * 3))
    b = boundary_similarity(pairs, teacher, fake_attack([[1, 0], [0, 1], [0, 2]], [ACCEPTED] * 3))
    (d,) = paired_differences({"a": a, "b": b})
    assert (d["student_a"], d["student_b"]) == ("a", "b")
    assert d["magsim"]["estimate"] == pytest.approx(0.6875 - 1.0) and d["magsim"]["units"] == 2
    # Per base sample the differences are (.875 − 1, .5 − 1): every resample lies in [−.5, −.125].
    assert -0.5 <= d["magsim"]["low"] <= d["magsim"]["high"] <= -0.125
    assert d["too_few_pairs"]   # 2 pairs each: the difference inherits the students' flag


def test_an_exact_copy_of_a_trained_teacher_scores_exactly_one(digits_teacher):
    from dfkd_core.data import load_split

    test = load_split("digits", "test")
    teacher = digits_teacher.model
    comparison = compare_students(teacher, {"copy": copy.deepcopy(teacher)}, test.normalized(), test.labels,
                                  n_base=300, pixel_bounds=digits_teacher.dataset.pixel_bounds())
    same = comparison.results["copy"]
    assert same.both_accepted > 0
    assert same.magsim == 1.0 and same.angsim == 1.0   # exactly (float32 cosines gave AngSim 0.99999988 here)
    assert (same.magsim_interval.low, same.angsim_interval.high) == (1.0, 1.0)
    assert (same.pair_data["cosine"][same.pair_data["teacher_outcome"] == ACCEPTED] == 1.0).all()


def test_base_samples_that_do_not_qualify_are_said_not_silently_dropped():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])
    labels = torch.tensor([0, 1, 1])   # the third is wrong for the teacher: 2 qualify
    x = torch.zeros(3, 1, 1, 2)
    pairs = choose_base_pairs(probs, [probs], x, labels, n_base=200)
    assert (pairs.asked, pairs.qualified, len(pairs.labels)) == (200, 2, 2)
    assert pairs.shortfall_note() == ("200 base samples asked, 2 qualified: only 2 test images are classified "
                                      "correctly by the teacher and every student")
    assert choose_base_pairs(probs, [probs], x, labels, n_base=2).shortfall_note() == ""


def test_pure_functions_stay_in_unit_interval():
    g = torch.Generator().manual_seed(0)
    t, s = torch.randn(500, 3, 4, 4, generator=g), torch.randn(500, 3, 4, 4, generator=g) * 3
    ratio, cos = magnitude_ratio(t, s), clipped_cosine(t, s)
    assert ((0 <= ratio) & (ratio <= 1)).all() and ((0 <= cos) & (cos <= 1)).all()
    assert (cos == 0).any()   # opposite-ish directions are clipped, not negative
    w = torch.rand(500, generator=g)
    assert 0 <= magnitude_similarity(t, s, w) <= 1 and 0 <= angle_similarity(t, s, w) <= 1
    assert magnitude_similarity(t, t, w) == pytest.approx(1.0) and angle_similarity(t, -t, w) == 0.0
    assert math.isnan(magnitude_similarity(t[:0], s[:0], w[:0]))


def rotated_student(theta_deg: float, scale: float = 1.0):
    """Two classes in R²: teacher L_a = 1 − x·e₁, student L_a = 1 − scale · x·u with u = e₁ rotated by θ."""
    th = math.radians(theta_deg)
    return LinearClassifier([[-scale * math.cos(th), -scale * math.sin(th)], [0.0, 0.0]], [1.0, 0.0])


@pytest.mark.parametrize("theta", [0, 30, 60, 90, 120])
def test_angsim_of_rotated_boundary_is_cosine(theta):
    # From x = 0 both models are at L_a = 1 and step along their own normal, so x̄^t ∥ e₁, x̄^s ∥ u, equal lengths.
    teacher = LinearClassifier([[-1.0, 0.0], [0.0, 0.0]], [1.0, 0.0])
    x, y = images([[0.0, 0.0]] * 4), torch.zeros(4, dtype=torch.long)
    result = decision_boundary_similarity(teacher, rotated_student(theta), x, y, n_base=4, settings=NEWTON,
                                          pixel_bounds=None)
    assert result.both_accepted == 4 and result.pairs == 4
    assert result.angsim == pytest.approx(max(0.0, math.cos(math.radians(theta))), abs=1e-9)
    assert result.magsim == pytest.approx(1.0)


def test_magsim_of_closer_boundary_is_distance_ratio():
    # Student's L_a = 1 − 2·x₁: its boundary is at half the teacher's distance, along the same normal.
    teacher = LinearClassifier([[-1.0, 0.0], [0.0, 0.0]], [1.0, 0.0])
    x, y = images([[0.0, 0.0]] * 3), torch.zeros(3, dtype=torch.long)
    result = decision_boundary_similarity(teacher, rotated_student(0, scale=2.0), x, y, n_base=3, settings=NEWTON,
                                          pixel_bounds=None)
    assert result.magsim == pytest.approx(0.5) and result.angsim == pytest.approx(1.0)


def test_no_accepted_pair_is_nan_with_explanation():
    teacher = LinearClassifier([[-1.0, 0.0], [0.0, 0.0]], [1.0, 0.0])
    x, y = images([[0.0, 0.0]] * 3), torch.zeros(3, dtype=torch.long)
    result = decision_boundary_similarity(teacher, teacher, x, y, n_base=3,
                                          settings=AttackSettings(eta=1e-3, max_steps=3), pixel_bounds=None)
    assert math.isnan(result.magsim) and math.isnan(result.angsim)
    assert result.both_accepted == 0 and "undefined" in result.note
    assert json.loads(json.dumps(result.to_dict(), default=str))["pairs"] == 3


def test_same_model_gives_one_and_students_share_base_samples(digits_teacher, digits_student_checkpoint):
    from dfkd_core.data import load_split
    from dfkd_core.models import load_checkpoint
    from dfkd_core.training import predict_logits

    test = load_split("digits", "test")
    x, y = test.normalized(), test.labels
    teacher = digits_teacher.model
    student = load_checkpoint(digits_student_checkpoint).model
    # The untrained student is right on few samples; base samples must be right for everyone.
    bounds = digits_teacher.dataset.pixel_bounds()
    comparison = compare_students(teacher, {"itself": teacher, "untrained": student}, x, y, n_base=12, seed=1,
                                  settings=AttackSettings(eta=1.0, max_steps=20), pixel_bounds=bounds)
    same = comparison.results["itself"]
    assert same.both_accepted == same.teacher_accepted > 0
    assert same.magsim == pytest.approx(1.0) and same.angsim == pytest.approx(1.0, abs=1e-5)
    other = comparison.results["untrained"]
    assert torch.equal(same.pair_data["teacher_perturbation"], other.pair_data["teacher_perturbation"])
    assert other.teacher_accepted == same.teacher_accepted and other.pairs == same.pairs == len(comparison.pairs)
    for r in (same, other):
        assert sum(c["pairs"] for c in r.per_class.values()) == r.pairs
        assert sum(c["both_accepted"] for c in r.per_class.values()) == r.both_accepted
        if r.both_accepted:
            assert 0 <= r.magsim <= 1 and 0 <= r.angsim <= 1
    # All k ≠ b of each base sample, weights p_n^k summing to 1 per base sample.
    pairs = comparison.pairs
    assert len(pairs) == 9 * len(pairs.labels)
    assert torch.bincount(pairs.pair_base, weights=pairs.pair_weight).tolist() == pytest.approx([1.0] * 12)
    tp = predict_logits(teacher, x).softmax(1)
    sp = predict_logits(student, x).softmax(1)
    assert (tp.argmax(1)[pairs.source_index] == pairs.labels).all()
    assert (sp.argmax(1)[pairs.source_index] == pairs.labels).all()
    # With one student the common selection is exactly select_base_samples; "sampled" gives one k per base.
    single = choose_base_pairs(tp, [sp], x, y, 20, targets="sampled", selection="gap")
    assert torch.equal(single.source_index, select_base_samples(tp, sp, y, 20))
    assert len(single) == len(single.labels) and (single.pair_weight == 1).all()
    assert (single.pair_target != single.labels).all()


def test_cli_boundary_table_and_run(tmp_path, capsys, digits_teacher, digits_student_checkpoint):
    from dfkd_core.analysis.boundary_job import load_boundary_run
    from dfkd_core.cli import main
    from dfkd_core.runs import RunStore

    home = tmp_path / "home"
    teacher = digits_teacher.path
    code = main(["--home", str(home), "--quiet", "boundary", "--teacher", teacher, "--student", teacher,
                 "--student", str(digits_student_checkpoint), "--samples", "6", "--max-steps", "15"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "MagSim" in out and "AngSim" in out and "accepted pairs" in out
    run_dir = Path(teacher).parent.name   # a run's model.pt outside this store is named by its directory
    same_row = next(line for line in out.splitlines() if f"{run_dir}:{digits_teacher.name}" in line)
    assert "1.000 [1.000, 1.000]   1.000 [1.000, 1.000]" in same_row
    assert same_row.startswith("! ") and f"fewer than {MIN_PAIRS} pairs" in out   # 6 base samples: too few pairs
    assert "MagSim(" in out and ") − MagSim(" in out   # the paired difference of the two students
    assert any(line.startswith("! MagSim(") for line in out.splitlines())   # flagged: it rests on 6 base samples
    run = RunStore(home).list(kind="analysis")[0]
    assert run.method == "boundary" and run.status == "done"
    summary, tensors = load_boundary_run(RunStore(home).get(run.id))
    assert summary["config"]["max_steps"] == 15 and len(summary["students"]) == 2
    rows = list(summary["students"].values())
    assert rows[0]["both_accepted"] == summary["teacher_outcomes"]["accepted"]
    assert rows[0]["too_few_pairs"] and rows[0]["magsim_interval"]["units"] == 6
    accuracy = rows[1]["accuracy_interval"]
    assert accuracy["low"] <= accuracy["estimate"] <= accuracy["high"] and accuracy["units"] == 360
    (difference,) = summary["differences"]
    assert difference["too_few_pairs"] and difference["magsim"]["units"] == 6
    assert "magsim_interval" in run.summary["students"][rows[0]["student"]]
    assert tensors["teacher_perturbation"].shape[0] == len(tensors["kept_pairs"])
    assert (run.dir / "boundary_bars.json").exists()


def test_cli_boundary_rejects_student_of_another_dataset(tmp_path, digits_teacher):
    from dfkd_core.cli import main
    from dfkd_core.data import dataset_info
    from dfkd_core.models import create_model, save_checkpoint

    other = save_checkpoint(tmp_path / "fmnist.pt", create_model("bncnn6_w16", 10, 1, 28),
                            dataset_info("fashion-mnist"))
    with pytest.raises(SystemExit, match="made for dataset fashion-mnist"):
        main(["--home", str(tmp_path / "home"), "boundary", "--teacher", digits_teacher.path,
              "--student", str(other)])


def test_figures():
    from dfkd_core.plots.boundary import (FADED, attack_loss_figure, attack_panels_figure, difference_figure,
                                          outcome_text, per_class_figure, similarity_bar_figure)
    from dfkd_core.stats import Interval

    rows = [{"student": "kd", "magsim": 0.8, "angsim": 0.6, "both_accepted": 120, "pairs": 200, "accuracy": 0.9,
             "magsim_interval": Interval(0.8, 0.75, 0.82, 40).to_dict(),
             "accuracy_interval": Interval(0.9, 0.88, 0.92, 360).to_dict()},
            {"student": "none", "magsim": float("nan"), "angsim": float("nan"), "both_accepted": 0, "pairs": 200},
            {"student": "few", "magsim": 0.9, "angsim": 0.7, "both_accepted": 27, "pairs": 200}]
    bars = similarity_bar_figure(rows)
    assert [t.name for t in bars.data] == ["MagSim", "AngSim"] and list(bars.data[0].y) == [0.8, None, 0.9]
    assert list(bars.data[0].error_y.array)[0] == pytest.approx(0.02)
    assert list(bars.data[0].error_y.arrayminus)[0] == pytest.approx(0.05)
    assert list(bars.data[0].marker.opacity) == [1.0, FADED, FADED]   # too few pairs: faded, not hidden
    assert bars.data[0].text[0] == "MagSim 0.800" and bars.data[0].textposition == "inside"   # not on the error bar
    notes = [a.text for a in bars.layout.annotations]
    assert notes[0].startswith("n = 120 pairs") and "acc 90.0% [88.0%, 92.0%]" in notes[0] and "undefined" in notes[1]
    assert "⚠ only 27 pairs: too few to compare" in notes[2] and "⚠" not in notes[0]
    differences = difference_figure([{"student_a": "bss", "student_b": "kd",
                                      "magsim": Interval(-0.051, -0.08, -0.02, 500).to_dict(),
                                      "angsim": Interval(0.01, -0.01, 0.03, 500).to_dict()}])
    assert list(differences.data[0].y) == ["bss − kd"] and list(differences.data[0].x) == [-0.051]
    assert list(differences.data[0].error_x.array) == pytest.approx([0.031])
    per_class = per_class_figure({"kd": {"0": {"magsim": .5, "angsim": .4, "both_accepted": 3, "pairs": 9}}},
                                 ["zero"])
    assert list(per_class.data[0].x) == ["zero"] and per_class.data[1].y[0] == .4
    assert list(per_class.data[0].marker.opacity) == [FADED]   # 3 pairs: faded
    base = torch.zeros(2, 1, 4, 4)
    t_adv, s_adv = base.clone(), base.clone()
    t_adv[:, 0, 0, 0], s_adv[:, 0, 0, 0] = 2.0, -1.0
    panels = attack_panels_figure(base, t_adv, s_adv, mean=[0.5], std=[0.25],
                                  teacher_status=[outcome_text(0, 3, 3)] * 2, student_status=["x", "y"])
    heatmaps = [t for t in panels.data if t.type == "heatmap" and t.colorscale[0][1] != "rgb(0,0,0)"]
    assert len(panels.data) == 10
    perturbation = panels.data[3]
    assert perturbation.zmid == 0 and perturbation.zmin == -2.0 and perturbation.zmax == 2.0 and heatmaps
    assert "crossed at step 3" in panels.layout.annotations[1].text
    assert outcome_text(2, -1, 20) == "rejected: no crossing in 20 steps"
    crossed = BoundaryAttackResult(torch.zeros(1, 1, 1, 1), torch.tensor([ACCEPTED]), torch.tensor([2]),
                                   torch.tensor([2]), torch.zeros(1), torch.zeros(1, dtype=torch.long),
                                   loss_trajectory=torch.tensor([[3.0], [1.0], [-0.1], [-0.1]]))
    rejected = BoundaryAttackResult(torch.zeros(1, 1, 1, 1), torch.tensor([REJECTED_MAX_STEPS]), torch.tensor([-1]),
                                    torch.tensor([3]), torch.zeros(1), torch.zeros(1, dtype=torch.long),
                                    loss_trajectory=torch.tensor([[3.0], [2.0], [1.5], [1.2]]))
    loss = attack_loss_figure(crossed, rejected)
    assert list(loss.data[0].y) == pytest.approx([3.0, 1.0, -0.1]) and len(loss.data[2].y) == 4
    assert loss.data[1].marker.symbol == "star" and loss.data[3].marker.symbol == "x"
    explained = {t.marker.symbol: t.name for t in loss.data[4:]}   # the legend says what ★ and ✕ mean
    assert explained == {"star": "crossed into class k", "x": "rejected (see its panel)"}
    assert [t.name for t in attack_loss_figure(crossed, crossed).data[4:]] == ["crossed into class k"]


def test_cancelled_analysis_keeps_finished_students(tmp_path, digits_teacher):
    from dfkd_core.analysis.boundary_job import BoundaryAnalysis, BoundaryConfig, load_boundary_run
    from dfkd_core.runs import RunStore

    store = RunStore(tmp_path / "home")
    config = BoundaryConfig(samples=5, targets="sampled", max_steps=10)
    run = store.create("analysis", config.to_dict(), method="boundary")
    model = digits_teacher.model
    job = BoundaryAnalysis(model, {"first": model, "second": model}, digits_teacher.dataset, config, run)
    job.subscribe(lambda e: job.cancel() if e.kind == "step" and e.step == 1 else None)
    job.run()
    assert job.status == "cancelled" and list(job.results) == ["first"]
    summary, _ = load_boundary_run(store.get(run.id))
    assert summary["partial"] is True and list(summary["students"]) == ["first"]
    assert store.get_record(run.id).status == "cancelled"


def test_each_similarity_bar_names_its_metric_where_it_is_read():
    from dfkd_core.plots.boundary import similarity_bar_figure
    rows = [{"student": "kd", "magsim": 0.5, "angsim": 0.6, "both_accepted": 300, "pairs": 400}]
    figure = similarity_bar_figure(rows)
    assert [list(bar.text) for bar in figure.data] == [["MagSim 0.500"], ["AngSim 0.600"]]


def test_gap_selection_says_its_value_depends_on_how_many_samples_it_keeps():
    """Gap selection keeps the samples where the students differ most from the teacher: on one digits student its
    MagSim went 0.28 → 0.55 from 60 to all 272 samples, with intervals that did not overlap. It says so; random
    selection, the default, estimates the value over every qualifying sample and needs no such note."""
    from dfkd_core.analysis.boundary import choose_base_pairs
    torch.manual_seed(0)
    teacher_probs = torch.softmax(torch.randn(50, 4) * 3, 1)
    labels = teacher_probs.argmax(1)
    student_probs = torch.softmax(torch.log(teacher_probs) + torch.randn(50, 4), 1)
    student_probs[torch.arange(50), labels] += 2.0   # every sample qualifies: the student agrees on the class
    x = torch.randn(50, 1, 4, 4)
    gap = choose_base_pairs(teacher_probs, [student_probs], x, labels, 10, selection="gap")
    assert "describe those samples and change with their number" in gap.selection_note()
    assert choose_base_pairs(teacher_probs, [student_probs], x, labels, 10).selection == "random"
    assert choose_base_pairs(teacher_probs, [student_probs], x, labels, 10).selection_note() == ""
    assert choose_base_pairs(teacher_probs, [student_probs], x, labels, 50, selection="gap").selection_note() == ""
