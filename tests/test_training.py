def test_digits_teacher_reaches_90_percent_and_saves_checkpoint(digits_teacher_job, digits_teacher):
    assert digits_teacher_job.result["test_accuracy"] >= 0.90
    assert digits_teacher.metrics["test_accuracy"] == digits_teacher_job.result["test_accuracy"]
    assert digits_teacher.dataset.name == "digits" and digits_teacher.model_cfg["name"] == "bncnn3_w32"
    epochs_evaluated = [h["test_accuracy"] for h in digits_teacher_job.history if "test_accuracy" in h]
    assert len(epochs_evaluated) == 20 and epochs_evaluated[-1] > epochs_evaluated[0]


def test_teacher_accuracy_carries_its_interval_over_the_test_images(digits_teacher_job):
    from dfkd_core.stats import Interval

    ci = Interval.from_dict(digits_teacher_job.result["test_accuracy_ci"])
    assert ci.estimate == digits_teacher_job.result["test_accuracy"] and ci.units == 360   # digits' test split
    assert ci.low <= ci.estimate <= ci.high and ci.high - ci.low < 0.05


def test_a_stopped_teacher_is_saved_at_once_as_a_partial_teacher(tmp_path):
    import pytest

    from dfkd_core.data import load_split
    from dfkd_core.models import load_checkpoint
    from dfkd_core.runs import RunStore
    from dfkd_core.training import EvaluationStopped, TeacherConfig, TeacherTraining, evaluate

    store = RunStore(tmp_path)
    job = TeacherTraining(TeacherConfig(dataset="digits", epochs=50))
    job.run_record = store.create("teacher", job.config.to_dict())
    job.subscribe(lambda e: job.cancel() if e.kind == "step" and e.step == 30 else None)
    job.run()
    assert job.status == "cancelled" and job.result["partial"] and "test_accuracy" not in job.result
    assert load_checkpoint(job.run_record.path("model.pt")).model is not None   # usable, marked partial
    with pytest.raises(EvaluationStopped):   # a Stop never waits for a whole test set
        evaluate(job.model, load_split("digits", "test"), batch_size=10, stop=lambda: True)
