"""What every analysis (`dfkd cka`, `dfkd gradcam`, `dfkd boundary`) checks before a run exists: a comparable
teacher/student pair, finite and in-range settings, and the user's data folder (never the checkpoint's)."""
import math
from types import SimpleNamespace

import pytest

from dfkd_core.analysis.boundary_job import BoundaryConfig
from dfkd_core.analysis.checks import require_comparable, sample_count_note
from dfkd_core.analysis.jobs import CKAConfig, GradCAMConfig
from dfkd_core.cli import main
from dfkd_core.data import dataset_info
from dfkd_core.models import create_model, save_checkpoint
from dfkd_core.runs import RunStore


def made_for(dataset: str, classes: int = 10, channels: int = 1, size: int = 8) -> SimpleNamespace:
    """What a checkpoint says about its task."""
    return SimpleNamespace(dataset=dataset_info(dataset),
                           model_cfg={"num_classes": classes, "in_channels": channels, "image_size": size})


def test_a_pair_is_comparable_only_for_the_same_dataset_input_shape_and_classes():
    require_comparable(made_for("digits"), made_for("digits"))
    with pytest.raises(ValueError, match=r"made for dataset fashion-mnist \(teacher: digits\), image size 28 "
                                         r"\(teacher: 8\)"):
        require_comparable(made_for("digits"), made_for("fashion-mnist", size=28), "student 'x'")
    with pytest.raises(ValueError, match=r"^the student cannot .* classes 5 \(teacher: 10\); an analysis"):
        require_comparable(made_for("digits"), made_for("digits", classes=5))
    with pytest.raises(ValueError, match=r"channels 3 \(teacher: 1\)"):
        require_comparable(made_for("digits"), made_for("digits", channels=3))


def test_sample_count_note_says_when_fewer_exist():
    assert sample_count_note(1000, 360, "the digits test split") == \
        "1,000 images asked, the digits test split has 360: all 360 are used"
    assert sample_count_note(0, 360, "x") == "" and sample_count_note(360, 360, "x") == ""


@pytest.mark.parametrize("config, field", [
    (CKAConfig(threshold=math.nan), "threshold"), (CKAConfig(threshold=-1.0), "threshold"),
    (CKAConfig(samples=-3), "samples"), (CKAConfig(kernel="cosine"), "kernel"), (CKAConfig(batch_size=2), "batch"),
    (CKAConfig(kernel="rbf", estimator="streaming"), "streaming"),
    (CKAConfig(kernel="debiased", estimator="streaming"), "streaming"),
    (GradCAMConfig(fraction=0.0), "fraction"), (GradCAMConfig(fraction=1.5), "fraction"),
    (GradCAMConfig(fraction=math.inf), "fraction"), (GradCAMConfig(samples=-1), "samples"),
    (BoundaryConfig(eta=math.nan), "eta"), (BoundaryConfig(eta=0.0), "eta"), (BoundaryConfig(samples=0), "samples"),
    (BoundaryConfig(max_steps=0), "max_steps"), (BoundaryConfig(eps=-1e-4), "eps"), (BoundaryConfig(pool=-5), "pool")])
def test_analysis_configs_refuse_bad_numbers_in_one_sentence(config, field):
    with pytest.raises(ValueError, match=field) as refused:
        config.validate()
    assert str(refused.value).count(". ") == 0   # one sentence
    type(config)().validate()                     # the defaults are valid


@pytest.fixture(scope="module")
def fashion_student(tmp_path_factory):
    """An (untrained) Fashion-MNIST student: another dataset and another image size than the digits teacher."""
    return str(save_checkpoint(tmp_path_factory.mktemp("fashion") / "model.pt",
                               create_model("bncnn3_w16", 10, 1, 28), dataset_info("fashion-mnist")))


def analysis(command: str, teacher: str, student: str, *extra: str) -> list[str]:
    return [command, "--teacher", teacher, "--student", student, *extra]


@pytest.mark.parametrize("command", ["cka", "gradcam", "boundary"])
def test_every_analysis_refuses_a_student_of_another_dataset_before_a_run(command, tmp_path, digits_teacher,
                                                                          fashion_student):
    home = tmp_path / "home"
    with pytest.raises(SystemExit, match="cannot be compared with the teacher: it was made for dataset "
                                         "fashion-mnist"):
        main(["--home", str(home), *analysis(command, digits_teacher.path, fashion_student)])
    assert not RunStore(home).list()


@pytest.mark.parametrize("command, setting", [("cka", ["--threshold", "nan"]), ("cka", ["--samples", "-5"]),
                                              ("gradcam", ["--fraction", "1.5"]), ("boundary", ["--eta", "-1"]),
                                              ("boundary", ["--eps", "inf"])])
def test_every_analysis_refuses_bad_numbers_before_a_run(command, setting, tmp_path, digits_teacher):
    home = tmp_path / "home"
    with pytest.raises(SystemExit, match="^error: .*must be"):
        main(["--home", str(home), *analysis(command, digits_teacher.path, digits_teacher.path, *setting)])
    assert not RunStore(home).list()


def test_cka_refuses_a_kernel_its_estimator_cannot_compute_before_a_run(tmp_path, digits_teacher):
    """The streaming estimator is exact linear CKA only: asking it for RBF left a failed run behind (item 3)."""
    home = tmp_path / "home"
    with pytest.raises(SystemExit, match="^error: the streaming estimator is exact linear CKA only"):
        main(["--home", str(home), *analysis("cka", digits_teacher.path, digits_teacher.path, "--kernel", "rbf",
                                             "--estimator", "streaming")])
    assert not RunStore(home).list()


def test_a_repeated_student_is_never_silently_dropped(tmp_path, digits_teacher):
    """`--student` repeats as in `dfkd boundary`: gradcam compares every one given; cka, which takes one, refuses a
    second rather than keeping only the last (argparse's default)."""
    home = tmp_path / "home"
    assert main(["--home", str(home), "--quiet", "gradcam", "--teacher", digits_teacher.path, "--student",
                 digits_teacher.path, "--student", digits_teacher.path, "--samples", "8"]) == 0
    (run,) = RunStore(home).list()
    (name,) = {n.rsplit("#", 1)[0] for n in run.summary["students"]}   # the same model twice: numbered apart
    assert sorted(run.summary["students"]) == [f"{name}#1", f"{name}#2"] and name.endswith(":bncnn3_w32")
    with pytest.raises(SystemExit, match="^error: cka compares one student"):
        main(["--home", str(home), "--quiet", "cka", "--teacher", digits_teacher.path, "--student",
              digits_teacher.path, "--student", digits_teacher.path])
    assert len(RunStore(home).list()) == 1


@pytest.mark.parametrize("command", ["cka", "gradcam", "boundary"])
def test_data_root_flag_is_where_the_data_is_read(command, tmp_path, monkeypatch):
    # A Fashion-MNIST teacher with no data anywhere: the error names the folder the user gave, not the checkpoint's.
    monkeypatch.delenv("DFKD_FASHION_MNIST", raising=False)
    teacher = str(save_checkpoint(tmp_path / "teacher.pt", create_model("bncnn3_w16", 10, 1, 28),
                                  dataset_info("fashion-mnist")))
    home = tmp_path / "home"
    with pytest.raises(SystemExit, match=str(tmp_path / "no-data-here")):
        main(["--home", str(home), *analysis(command, teacher, teacher, "--data-root", str(tmp_path / "no-data-here"))])
    assert not RunStore(home).list()


def test_data_root_is_stored_with_the_run(tmp_path, digits_teacher):
    home = tmp_path / "home"
    assert main(["--home", str(home), "--quiet", "gradcam", "--teacher", digits_teacher.path, "--student",
                 digits_teacher.path, "--samples", "8", "--data-root", str(tmp_path)]) == 0
    (run,) = RunStore(home).list()
    assert RunStore(home).get(run.id).config()["data_root"] == str(tmp_path)


@pytest.mark.parametrize("command, extra", [("cka", ["--samples", "40"]), ("gradcam", ["--samples", "8"]),
                                            ("boundary", ["--samples", "5", "--targets", "sampled",
                                                          "--max-steps", "5"])])
def test_every_analysis_takes_an_untrained_reference_as_a_student(command, extra, tmp_path, digits_teacher):
    """The floor a similarity is read against: `untrained:<model>`, built for the teacher's dataset."""
    home = tmp_path / "home"
    assert main(["--home", str(home), "--quiet", *analysis(command, digits_teacher.path, "untrained:bncnn3_w16",
                                                           *extra)]) == 0
    (run,) = RunStore(home).list()
    assert run.status == "done" and "untrained:bncnn3_w16" in run.name + " ".join(run.summary.get("students", ()))
    with pytest.raises(SystemExit, match="cannot use student 'untrained:nonsense': unknown untrained reference"):
        main(["--home", str(home), *analysis(command, digits_teacher.path, "untrained:nonsense")])
    assert len(RunStore(home).list()) == 1
