"""benchmarks/robustness.py resumes over sittings; it must never reuse a student made with other settings (a recipe
changed since) and may reuse only a pool that the asked-for run would synthesize identically."""
import torch
from benchmark_scripts import load_benchmark

from dfkd_core.distill import DistillConfig
from dfkd_core.distill.recipes import recipe_overrides
from dfkd_core.runs import RunStore


def _robustness():
    return load_benchmark("robustness")


def _stored(store, name, config, teacher="/t/model.pt", images=False, pool=None):
    run = store.create("distill", {**config, "teacher": teacher, "pool": pool}, method=config["method"],
                       dataset="fashion-mnist", name=name)
    if images:
        torch.save({"images": torch.zeros(1)}, run.dir / "images.pt")
    run.set_status("done", {"ratio": 0.95})
    return run


def _wanted(**kw):
    return DistillConfig(**{"method": "deepinversion", "seed": 0,
                            **recipe_overrides("fashion-best", "deepinversion"), **kw}).to_dict()


def test_a_student_is_reused_only_with_the_settings_asked_for(tmp_path):
    rb, store = _robustness(), RunStore(tmp_path)
    old = _stored(store, "s", _wanted(temperature=4.0))
    record, stale = rb.find_student(store, "s", _wanted(temperature=4.0), "/t/model.pt")
    assert record.id == old.id and stale == []
    record, stale = rb.find_student(store, "s", _wanted(temperature=20.0), "/t/model.pt")
    assert record is None and stale == ["temperature: 4.0 → 20.0"]
    assert rb.find_student(store, "s", _wanted(temperature=4.0), "/other/model.pt")[0] is None
    # Where the run ran is not a difference.
    assert rb.find_student(store, "s", {**_wanted(temperature=4.0), "device": "cuda"}, "/t/model.pt")[0].id == old.id


def test_the_same_computation_under_another_name_is_found_but_not_on_another_pool(tmp_path):
    rb, store = _robustness(), RunStore(tmp_path)
    source = _stored(store, "s", _wanted(temperature=4.0), images=True)
    # A CLI run that reused the robustness run's own pool with a new temperature: the student the script wants now.
    cli = _stored(store, "cli", {**_wanted(temperature=20.0), "processes": 1}, pool=str(source.dir / "images.pt"))
    assert rb.find_student(store, "s", _wanted(temperature=20.0), "/t/model.pt") == (store.get_record(cli.id), [])
    # A pool grown by other means (boundary samples in /tmp) is another computation, whatever the settings say.
    foreign = tmp_path / "bss.pt"
    torch.save({"images": torch.zeros(1)}, foreign)
    _stored(store, "bss", _wanted(temperature=3.0), pool=str(foreign))
    assert rb.find_student(store, "x", _wanted(temperature=3.0), "/t/model.pt") == (None, [])


def test_a_pool_is_reused_only_when_it_is_the_one_the_run_would_synthesize(tmp_path):
    rb, store = _robustness(), RunStore(tmp_path)
    _stored(store, "no images kept", _wanted(temperature=4.0))
    assert rb.reusable_pool(store, "/t/model.pt", _wanted(temperature=20.0)) is None
    source = _stored(store, "s", _wanted(temperature=4.0), images=True)
    # KD settings may differ (the pool does not depend on them) ...
    assert rb.reusable_pool(store, "/t/model.pt", _wanted(temperature=20.0, mixup=0.0)).id == source.id
    # ... synthesis settings, the seed and the teacher may not.
    assert rb.reusable_pool(store, "/t/model.pt", _wanted(seed=1)) is None
    assert rb.reusable_pool(store, "/t/model.pt", _wanted(synthesis={"batch_size": 200, "iterations": 100})) is None
    assert rb.reusable_pool(store, "/other/model.pt", _wanted()) is None
    # With KD during synthesis the student steers the images: never reused.
    _stored(store, "adi-like", _wanted(kd_steps_per_round=20), images=True)
    assert rb.reusable_pool(store, "/t/model.pt", _wanted(kd_steps_per_round=20)) is None


def test_a_student_of_another_precision_is_not_reused(tmp_path):
    """`amp` means bf16 on CPUs with native bf16 too, so the config alone does not say what a run computed in: a
    float32 student (every run before runs recorded their precision) is not the bf16 student asked for on such a
    CPU, nor is its pool."""
    rb, store = _robustness(), RunStore(tmp_path)
    old = _stored(store, "s", _wanted(), images=True)
    bf16 = {**_wanted(), "precision": "bfloat16 autocast (CPU with native bf16)"}
    record, stale = rb.find_student(store, "s", bf16, "/t/model.pt")
    assert record is None and stale == ["precision: float32 → bfloat16 autocast (CPU with native bf16)"]
    assert rb.reusable_pool(store, "/t/model.pt", bf16) is None
    assert rb.find_student(store, "s", {**_wanted(), "precision": "float32"}, "/t/model.pt")[0].id == old.id


def test_the_wanted_precision_is_what_this_machine_computes():
    from dfkd_core.device import precision
    rb = _robustness()
    for amp in (True, False):
        for cpu_bf16 in (True, False):
            config = DistillConfig(method="deepinversion", device="cpu", amp=amp, cpu_bf16=cpu_bf16)
            assert rb.wanted_settings(config)["precision"] == precision(torch.device("cpu"), amp, cpu=cpu_bf16)


def test_a_float32_run_that_asked_for_bf16_is_a_float32_run():
    """On a CPU without native bf16 a run asking for it computes in float32 and says so; for reuse it is the same
    computation as any float32 run (cpu_bf16 itself is not compared: its outcome, the precision, is)."""
    rb = _robustness()
    asked = {**_wanted(), "cpu_bf16": True, "precision": "float32 (bf16 asked for, but this CPU has no native bf16)"}
    assert rb.config_differences(_wanted(), asked) == []
    assert rb.config_differences(_wanted(), {**asked, "precision": "bfloat16 autocast (CPU with native bf16)"}) != []


def test_set_changes_one_recipe_setting_and_names_the_students_apart():
    rb = _robustness()
    assert rb.parse_settings(["synthesis.alpha_f=0.3", "mixup=0.25", "augment=shift"]) == {
        "synthesis": {"alpha_f": 0.3}, "mixup": 0.25, "augment": "shift"}
    args = type("Args", (), {"method": "deepinversion", "recipe": "fashion-best", "device": "cpu", "data_root": None,
                             "teacher_model": "bncnn6_w32",
                             "overrides": rb.parse_settings(["synthesis.alpha_f=0.3"]),
                             "set": {"synthesis.alpha_f": "0.3"}})()
    config = rb.student_config(args, 1)
    recipe = recipe_overrides("fashion-best", "deepinversion")
    assert config.synthesis == {**recipe["synthesis"], "alpha_f": 0.3} and config.mixup == recipe["mixup"]
    assert "alpha_f=0.3" in rb.student_name(args, 0, 1) and "bncnn6_w32 teacher seed 0" in rb.student_name(args, 0, 1)
    args.set, args.overrides = {}, {}
    assert "alpha_f" not in rb.student_name(args, 0, 1) and rb.student_config(args, 1).synthesis == recipe[
        "synthesis"]


def test_a_committed_teacher_is_imported_with_its_summary(tmp_path, digits_teacher_job, monkeypatch):
    rb = _robustness()
    monkeypatch.setattr(rb, "TEACHERS_DIR", tmp_path / "teachers")
    source_store = RunStore(digits_teacher_job.run_record.dir.parents[1])
    record = source_store.get_record(digits_teacher_job.run_record.id)
    args = type("Args", (), {"dataset": "digits", "teacher_model": "bncnn3_w32", "teacher_epochs": 20,
                             "train_teachers": False, "data_root": None})()
    path = rb.committed_teacher(args, 0)
    rb.export_teacher(record, path, source_store)
    store = RunStore(tmp_path / "home")
    imported = rb.teacher_for(0, args, store)   # nothing stored: imported, not trained
    assert imported.status == "done" and imported.name == rb.teacher_name(args, 0)
    assert imported.summary["test_accuracy"] == record.summary["test_accuracy"]
    assert (imported.dir / "model.pt").read_bytes() == path.read_bytes()
    assert rb.teacher_for(0, args, store).id == imported.id   # found by name the second time


def test_a_run_made_before_a_setting_existed_computed_with_its_default(tmp_path):
    """A stored config lacks the settings added since (teacher_echo, cutmix): the run computed with their defaults,
    so it is the student asked for at the default and not at another value."""
    rb, store = _robustness(), RunStore(tmp_path)
    before = {k: v for k, v in _wanted().items() if k not in ("teacher_echo", "cutmix")}
    before["mixup"] = 0.5
    old = _stored(store, "s", before)
    assert rb.find_student(store, "s", _wanted(cutmix=0.0, mixup=0.5), "/t/model.pt") == (store.get_record(old.id), [])
    record, stale = rb.find_student(store, "s", _wanted(cutmix=0.0, mixup=0.5, teacher_echo=2), "/t/model.pt")
    assert record is None and stale == ["teacher_echo: 1 → 2"]
