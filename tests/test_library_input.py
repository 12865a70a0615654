"""Calls from a notebook that pass the wrong kind of thing get one sentence that says what to pass instead."""
import pytest
import torch

from dfkd_core.analysis.boundary import compare_students
from dfkd_core.analysis.cka_matrix import cka_matrix
from dfkd_core.analysis.gradcam import compare_attention
from dfkd_core.distill import DistillConfig, DistillJob
from dfkd_core.distill.pool import PoolError, SyntheticPool
from dfkd_core.models import CheckpointError, load_checkpoint
from dfkd_core.synthesis import ModelInversion, SynthesisConfig


def test_each_job_says_which_form_of_the_teacher_it_takes(digits_teacher):
    with pytest.raises(TypeError, match=r"pass checkpoint.model, checkpoint.dataset"):
        ModelInversion(digits_teacher, digits_teacher.dataset, SynthesisConfig())
    with pytest.raises(TypeError, match=r"takes the teacher's Checkpoint .* got a"):
        DistillJob(digits_teacher.model, DistillConfig(method="noise"))


def test_a_run_id_where_a_file_was_expected_points_to_the_store():
    with pytest.raises(CheckpointError, match=r"looks like a run id: .*resolve_checkpoint\('teacher-20261207-x'\)"):
        load_checkpoint("teacher-20261207-x")
    with pytest.raises(CheckpointError, match="checkpoint not found: /no/such/model.pt$"):
        load_checkpoint("/no/such/model.pt")


def test_a_pool_given_as_a_run_id_points_to_its_images(digits_teacher):
    with pytest.raises(PoolError, match=r"resolve_checkpoint\('synthesis-1', 'images.pt'\)"):
        SyntheticPool.load("synthesis-1", digits_teacher.dataset)


def test_analyses_refuse_raw_pixels_in_one_sentence(digits_teacher):
    model = digits_teacher.model
    raw = torch.randint(0, 255, (4, 1, 8, 8), dtype=torch.uint8)
    for call in (lambda: cka_matrix(model, model, None, None, raw),
                 lambda: compare_attention(model, model, raw, torch.zeros(4, dtype=torch.long)),
                 lambda: compare_students(model, {"s": model}, raw, torch.zeros(4, dtype=torch.long),
                                          pixel_bounds=None)):
        with pytest.raises(TypeError, match=r"float batch \(N, C, H, W\) of normalized images, got a torch.uint8"):
            call()


def test_a_preset_refuses_an_unknown_dataset_or_setting_in_a_sentence():
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist'; choose one of \['cifar10', 'digits'"):
        SynthesisConfig.preset("deepinversion", dataset="mnist")
    with pytest.raises(ValueError, match=r"no setting \['alpha_feature'\]; its settings: .*'alpha_f'"):
        SynthesisConfig.preset("deepinversion", dataset="digits", alpha_feature=1.0)


def test_every_analysis_refuses_nan_wrong_size_and_float64_images_alike(digits_teacher):
    """CKA refused NaN images, Grad-CAM counted them as undefined and the boundary analysis dropped them; 28×28
    images were analysed by an 8×8 digits teacher (adaptive pooling took them)."""
    from dfkd_core.analysis import cka_matrix, compare_attention, compare_students
    from dfkd_core.data import load_split
    from dfkd_core.models import create_model
    teacher = digits_teacher.model
    student = create_model("bncnn3_w16", 10, 1, 8).eval()
    split = load_split("digits", "test")
    x, y = split.normalized(slice(0, 20)).contiguous(), split.labels[:20]
    nan = x.clone()
    nan[3, 0, 0, 0] = float("nan")
    big = torch.nn.functional.interpolate(x, size=28)
    calls = {"cka": lambda images: cka_matrix(teacher, student, None, None, images),
             "gradcam": lambda images: compare_attention(teacher, {"s": student}, images, y),
             "boundary": lambda images: compare_students(teacher, {"s": student}, images, y, n_base=5,
                                                         pixel_bounds=None)}
    for name, call in calls.items():
        with pytest.raises(ValueError, match="1 of 20 .* hold NaN or infinite values"):
            call(nan)
        with pytest.raises(ValueError, match="are 1×28×28 and bncnn3_w32 takes 1×8×8 images"):
            call(big)
        with pytest.raises(TypeError, match="float64 .* pass .*float\\(\\)"):
            call(x.double())
    with pytest.raises(ValueError, match="n_base must be at least 1"):
        compare_students(teacher, {"s": student}, x, y, n_base=-5, pixel_bounds=None)
    with pytest.raises(ValueError, match="different numbers of classes"):
        compare_attention(teacher, {"s": create_model("bncnn3_w16", 12, 1, 8).eval()}, x, y)
