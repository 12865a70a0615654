"""Distillation end to end on digits (fast): every method runs, data-free students beat the noise baseline."""
import copy
import json

import pytest
import torch

from dfkd_core.cli import main
from dfkd_core.data import dataset_info
from dfkd_core.distill import DistillConfig, DistillJob, PoolError, SyntheticPool, list_methods
from dfkd_core.distill.student import cutmix_boxes, mix_batch, mix_images, random_shift
from dfkd_core.models import create_model, load_checkpoint, save_checkpoint
from dfkd_core.runs import RunStore
from dfkd_core.synthesis.generator import ConditionalGenerator, GeneratorEnsemble

from hand_models import run_distill

CHANCE = 0.1


@pytest.fixture(scope="module")
def noise_job(digits_teacher):
    return run_distill(digits_teacher, "noise")


@pytest.fixture(scope="module")
def deepinversion_job(digits_teacher, session_store):
    return run_distill(digits_teacher, "deepinversion", session_store, images=400, kd_steps_per_round=10,
                    synthesis={"iterations": 80, "batch_size": 100})


def test_kd_on_deepinversion_pool_clearly_beats_noise_and_chance(deepinversion_job, noise_job):
    di, noise = deepinversion_job.result, noise_job.result
    assert di["student_accuracy"] >= noise["student_accuracy"] + 0.15
    assert di["student_accuracy"] > 3 * CHANCE
    assert di["images_synthesized"] == 400 and di["pool_size"] == 400
    assert di["ratio"] == pytest.approx(di["student_accuracy"] / di["teacher_accuracy"])
    assert di["teacher_accuracy"] > 0.9 and di["data_free"] is True


def test_run_directory_has_student_pool_and_curve(deepinversion_job):
    run = deepinversion_job.run_record
    student = load_checkpoint(run.path("model.pt"))
    assert student.name == "bncnn3_w16"
    assert student.metrics["test_accuracy"] == deepinversion_job.result["student_accuracy"]
    pool = torch.load(run.path("images.pt"), weights_only=True)
    assert pool["images"].shape == (400, 1, 8, 8) and run.path("grid.png").exists()
    curve = deepinversion_job.result["curve"]
    assert curve[0]["images_synthesized"] == 0 and curve[-1]["images_synthesized"] == 400
    assert [c["student_steps"] for c in curve] == sorted(c["student_steps"] for c in curve)
    phases = {m["phase"] for m in run.metrics()}
    assert phases == {"synthesis", "kd"}


def test_pool_is_reusable_for_another_student(deepinversion_job, digits_teacher):
    pool = SyntheticPool.load(deepinversion_job.run_record.path("images.pt"), digits_teacher.dataset)
    job = DistillJob(copy.deepcopy(digits_teacher),
                     DistillConfig(method="deepinversion", pool=pool.source, student="bncnn3_w8", steps=200),
                     pool=pool)
    job.run()
    r = job.result
    assert r["images_synthesized"] == 0 and r["pool_size"] == 400 and r["student"] == "bncnn3_w8"
    assert not any(m.get("phase") == "synthesis" for m in job.history)
    assert r["student_accuracy"] > 3 * CHANCE


def test_pool_named_in_the_config_alone_is_loaded(deepinversion_job, digits_teacher):
    """A notebook user who only sets `pool=` in the config gets the pool, not an empty one."""
    path = str(deepinversion_job.run_record.path("images.pt"))
    job = DistillJob(copy.deepcopy(digits_teacher), DistillConfig(method="deepinversion", pool=path, steps=20))
    assert len(job.pool) == 400 and job.pool.source == path
    job.run()
    assert job.status == "done" and job.result["student_steps"] == 20 and job.result["images_synthesized"] == 0


def test_pool_reuse_with_the_same_seed_repeats_a_run_without_trajectory_kd(digits_teacher, session_store):
    """`fashion-best` runs no KD during synthesis, so `--pool <run> --seed <same>` is the same student: the README
    counts its pool-reuse seeds as runs of the recipe. Mixup on, as in that recipe."""
    settings = dict(images=200, kd_steps_per_round=0, steps=60, mixup=0.5, options={"trajectory_kd_from": -1},
                    synthesis={"iterations": 20, "batch_size": 100})
    whole = run_distill(digits_teacher, "deepinversion", session_store, **settings)
    reused = DistillJob(copy.deepcopy(digits_teacher), DistillConfig(
        method="deepinversion", pool=str(whole.run_record.path("images.pt")), eval_every=100, **settings))
    reused.run()
    assert reused.images_synthesized == 0 and len(reused.pool) == 200
    for a, b in zip(whole.student.state_dict().values(), reused.student.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)
    assert whole.result["student_accuracy"] == reused.result["student_accuracy"]


def test_kd_snapshots_label_the_same_latest_images_once(deepinversion_job, digits_teacher):
    """Through a pool's KD the live view shows the same latest images for thousands of steps; their teacher labels
    are computed once, not at every snapshot (in the app, every step or two)."""
    path = str(deepinversion_job.run_record.path("images.pt"))
    job = DistillJob(copy.deepcopy(digits_teacher), DistillConfig(method="deepinversion", pool=path, steps=4))
    job.run()
    calls = [0]
    job.teacher.register_forward_pre_hook(lambda module, args: calls.__setitem__(0, calls[0] + 1))
    first = job.method.snapshot()   # the run's own snapshots labelled these images already
    assert job.method.snapshot() is first and calls[0] == 0
    job.method.latest = (job.pool.images[64:128], job.pool.targets[64:128])   # new images: labelled anew
    assert job.method.snapshot() is not first and calls[0] == 1


def test_pool_from_another_dataset_or_garbage_is_refused(tmp_path, digits_teacher):
    torch.save({"images": torch.zeros(5, 1, 28, 28), "dataset": {"name": "fashion-mnist"}}, tmp_path / "fm.pt")
    with pytest.raises(PoolError, match="shape"):
        SyntheticPool.load(tmp_path / "fm.pt", digits_teacher.dataset)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(PoolError, match="not a readable image pool"):
        SyntheticPool.load(tmp_path / "junk.pt", digits_teacher.dataset)
    torch.save({"images": torch.full((3, 1, 8, 8), float("nan"))}, tmp_path / "nan.pt")
    with pytest.raises(PoolError, match="NaN"):
        SyntheticPool.load(tmp_path / "nan.pt", digits_teacher.dataset)


def test_several_pools_join_into_one_in_the_order_given(tmp_path, digits_teacher):
    """Pools of several synthesis seeds as one (issue 19's pool ensembles): every image and target of each file, in
    order; one bad file among them is refused by name, and an empty list is refused rather than read as no pool."""
    info = digits_teacher.dataset
    first, second = info.normalize(torch.rand(3, 1, 8, 8)), info.normalize(torch.rand(2, 1, 8, 8))
    torch.save({"images": first, "targets": torch.tensor([0, 1, 2])}, tmp_path / "a.pt")
    torch.save({"images": second, "targets": torch.tensor([7, 9])}, tmp_path / "b.pt")
    joined = SyntheticPool.load([tmp_path / "a.pt", str(tmp_path / "b.pt")], info)
    assert torch.equal(joined.images, torch.cat([first, second]))
    assert joined.targets.tolist() == [0, 1, 2, 7, 9] and "a.pt" in joined.source and "b.pt" in joined.source
    torch.save({"images": torch.full((1, 1, 8, 8), float("nan"))}, tmp_path / "nan.pt")
    with pytest.raises(PoolError, match="nan.pt contains NaN"):
        SyntheticPool.load([tmp_path / "a.pt", tmp_path / "nan.pt"], info)
    with pytest.raises(PoolError, match="no pool given"):
        SyntheticPool.load([], info)


def test_cli_distills_one_student_on_the_pools_of_two_runs(tmp_path, capsys, digits_teacher):
    """`--pool A B`: one pool of both runs' images; the config keeps both paths, so the run says what it used."""
    home, teacher = str(tmp_path / "home"), str(digits_teacher.path)
    ids = []
    for seed, images in ((0, 100), (1, 50)):
        assert main(["--home", home, "--quiet", "distill", "--teacher", teacher, "--method", "deepinversion",
                     "--images", str(images), "--inv-iterations", "5", "--steps", "5", "--seed", str(seed)]) == 0
        ids.append(capsys.readouterr().out.split("run ")[1].split()[0])
    assert main(["--home", home, "--quiet", "distill", "--teacher", teacher, "--pool", *ids, "--steps", "10"]) == 0
    out = capsys.readouterr().out
    assert json.JSONDecoder().raw_decode(out[out.index("{"):])[0]["pool_size"] == 150
    joined = RunStore(home).list(kind="distill")[0]   # newest first
    assert [p.split("/")[-2] for p in RunStore(home).get(joined.id).config()["pool"]] == ids


def test_adi_competes_with_the_current_student(digits_teacher):
    job = run_distill(digits_teacher, "adi", images=200, kd_steps_per_round=20, steps=100,
                   synthesis={"iterations": 30, "batch_size": 100})
    compete = [m["inv_loss_compete"] for m in job.history if m["phase"] == "synthesis"]
    assert len(compete) == 60 and all(0 <= c <= 1 for c in compete)
    assert job.result["student_accuracy"] > CHANCE


def test_generator_loss_falls_and_samples_match_their_condition(digits_teacher, session_store):
    job = run_distill(digits_teacher, "generator", session_store, generator_steps=150, steps=150, batch_size=100)
    gen = [m for m in job.history if m["phase"] == "generator"]
    first, last = sum(m["gen_loss_total"] for m in gen[:10]), sum(m["gen_loss_total"] for m in gen[-10:])
    assert last < 0.5 * first
    assert sum(m["gen_teacher_accuracy"] for m in gen[-10:]) / 10 > 5 * CHANCE
    saved = torch.load(job.run_record.path("generator.pt"), weights_only=True)
    g = ConditionalGenerator(saved["latent_dim"], digits_teacher.dataset, width=saved["width"])
    g.load_state_dict(saved["state_dict"])
    y = torch.arange(100) % 10
    with torch.no_grad():
        predicted = digits_teacher.model.eval()(g.eval()(torch.randn(100, saved["latent_dim"]), y)).argmax(1)
    assert (predicted == y).float().mean() > 5 * CHANCE
    assert job.result["student_accuracy"] > 2 * CHANCE


def test_generator_ensemble_has_one_generator_per_class(digits_teacher, session_store):
    job = run_distill(digits_teacher, "generator-ensemble", session_store, generator_steps=10, steps=10, batch_size=50)
    assert job.result["generators"] == 10
    ensemble = job.method.generator
    assert isinstance(ensemble, GeneratorEnsemble) and len(ensemble.members) == 10
    device = next(ensemble.parameters()).device   # the job's device: CUDA on a GPU machine
    y = torch.tensor([3, 3, 7], device=device)
    x = ensemble(torch.randn(3, ensemble.latent_dim, device=device), y)
    assert x.shape == (3, 1, 8, 8)
    low, high = digits_teacher.dataset.pixel_bounds(device)
    assert x.min() >= low.min() - 1e-5 and x.max() <= high.max() + 1e-5


def test_real_kd_upper_bound_is_marked_not_data_free(digits_teacher):
    job = run_distill(digits_teacher, "real-kd", steps=200)
    assert job.result["data_free"] is False and job.result["student_accuracy"] > 0.8


def test_scratch_learns_from_labels_alone(digits_teacher):
    job = run_distill(digits_teacher, "scratch", steps=150)
    assert job.result["data_free"] is False and job.result["student_accuracy"] > 0.8
    assert all(m["loss_total"] == pytest.approx(m["loss_ce"]) for m in job.history)


def test_cancel_keeps_student_and_pool(digits_teacher, store):
    config = DistillConfig(method="deepinversion", images=1000, synthesis={"iterations": 20, "batch_size": 50},
                           kd_steps_per_round=5, steps=100)
    run = store.create("distill", config.to_dict())
    job = DistillJob(copy.deepcopy(digits_teacher), config, run=run)
    job.subscribe(lambda e: job.cancel() if e.kind == "step" and e.metrics.get("images_synthesized") == 100 else None)
    job.run()
    assert job.status == "cancelled" and store.get_record(run.id).status == "cancelled"
    assert job.result["images_synthesized"] == 100
    assert load_checkpoint(run.path("model.pt")).name == "bncnn3_w16"
    assert torch.load(run.path("images.pt"), weights_only=True)["images"].shape[0] == 100


def test_teacher_without_batchnorm_gets_clear_error_but_noise_works(digits_teacher, tmp_path):
    plain = create_model("plaincnn3_w32", 10, 1, 8)
    path = save_checkpoint(tmp_path / "plain.pt", plain, digits_teacher.dataset)
    teacher = load_checkpoint(path)
    with pytest.raises(ValueError, match="no BatchNorm"):
        DistillJob(teacher, DistillConfig(method="deepinversion", student="bncnn3_w16"))
    with pytest.raises(ValueError, match="BatchNorm"):
        DistillJob(teacher, DistillConfig(method="generator", student="bncnn3_w16"))
    with pytest.raises(ValueError, match="no default student"):
        DistillJob(load_checkpoint(save_checkpoint(tmp_path / "lenet.pt", create_model("lenet5_half", 10, 1, 16),
                                                   dataset_info("digits", image_size=16))), DistillConfig(method="noise"))
    job = DistillJob(teacher, DistillConfig(method="noise", steps=5))   # its default student: bncnn3_w16
    assert job.student_name == "bncnn3_w16"
    job.run()
    assert job.status == "done"


def test_method_options_are_checked_against_the_method(digits_teacher):
    with pytest.raises(ValueError, match="does not take options"):
        DistillJob(digits_teacher, DistillConfig(method="noise", options={"lambda_inh": 1.0}))
    with pytest.raises(SystemExit, match="takes no options"):
        main(["distill", "--teacher", str(digits_teacher.path), "--method", "noise", "--option", "a=1"])


def test_unknown_method_lists_choices(digits_teacher):
    with pytest.raises(ValueError, match="deepinversion"):
        DistillJob(digits_teacher, DistillConfig(method="magic"))
    assert {"noise", "deepdream", "deepinversion", "adi", "generator", "generator-ensemble",
            "real-kd"} <= set(list_methods())


def test_random_shift_moves_each_image_by_its_own_offset():
    x = torch.zeros(64, 1, 5, 5)
    x[:, 0, 2, 2] = 1.0
    shifted = random_shift(x, 1, torch.Generator().manual_seed(0))
    positions = {tuple(torch.nonzero(s[0])[0].tolist()) for s in shifted}
    assert all(len(torch.nonzero(s[0])) == 1 for s in shifted)  # the dot moved, nothing smeared
    assert positions <= {(r, c) for r in (1, 2, 3) for c in (1, 2, 3)} and len(positions) > 3


def test_mixup_is_identity_at_zero_and_convex_at_one():
    x = torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)])
    assert torch.equal(mix_images(x, 0.0), x)
    mixed = mix_images(x, 1.0, torch.Generator().manual_seed(1))
    assert mixed.min() >= 0 and mixed.max() <= 1
    assert torch.allclose(mixed[..., 0, 0], mixed[..., 1, 1])  # one λ per image


def test_cutmix_box_has_the_hand_computed_sides_and_clips_at_the_border():
    # keep λ = 0.75 → side √0.25 = 0.5: a 4 × 4 box in an 8 × 8 image, centred where the generator puts it.
    g = torch.Generator().manual_seed(3)
    masks = cutmix_boxes(200, 8, 8, torch.full((200,), 0.75), g)
    g = torch.Generator().manual_seed(3)
    cy, cx = torch.randint(0, 8, (200,), generator=g), torch.randint(0, 8, (200,), generator=g)
    for mask, y, x in zip(masks[:, 0], cy.tolist(), cx.tolist()):
        rows, cols = (max(0, min(8, y - 2)), max(0, min(8, y + 2))), (max(0, min(8, x - 2)), max(0, min(8, x + 2)))
        expected = torch.zeros(8, 8, dtype=torch.bool)
        expected[rows[0]:rows[1], cols[0]:cols[1]] = True
        assert torch.equal(mask, expected)
    assert masks.sum((1, 2, 3)).max() == 16 and masks.sum((1, 2, 3)).min() < 16   # clipped at an edge
    assert not cutmix_boxes(4, 8, 8, torch.ones(4)).any()                          # λ = 1 keeps the whole image


def test_mix_batch_pastes_boxes_of_the_partner_and_is_mixup_without_cutmix():
    x = torch.arange(16.0).view(16, 1, 1, 1).expand(16, 1, 6, 6).contiguous()   # image i is the constant i
    assert torch.equal(mix_batch(x, 0.5, 0.0, torch.Generator().manual_seed(2)),
                       mix_images(x, 0.5, torch.Generator().manual_seed(2)))    # old runs repeat draw for draw
    pasted = mix_batch(x, 0.0, 1.0, torch.Generator().manual_seed(2))
    for own, image in zip(range(16), pasted[:, 0]):
        values = set(image.unique().tolist())
        assert own in values and len(values) <= 2                   # the own image and at most one partner
        foreign = image != own
        if foreign.any():                                           # the partner's pixels form one rectangle
            rows, cols = foreign.any(1).nonzero()[:, 0], foreign.any(0).nonzero()[:, 0]
            assert foreign.sum() == len(rows) * len(cols)
            assert foreign[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
    both = mix_batch(x, 0.5, 0.5, torch.Generator().manual_seed(5))
    blended = [(img != img.round()).any() for img in both[:, 0]]     # λ·i + (1 − λ)·j is rarely an integer
    assert 0 < sum(blended) < 16
    assert all(len(img.unique()) <= 2 for img, b in zip(both[:, 0], blended) if not b)


def test_cli_distill_noise_and_pool_reuse(tmp_path, capsys, digits_teacher):
    home = str(tmp_path / "home")
    teacher = str(digits_teacher.path)
    assert main(["--home", home, "--quiet", "distill", "--teacher", teacher, "--method", "deepinversion",
                 "--images", "100", "--inv-iterations", "20", "--steps", "30", "--alpha-f", "0.5"]) == 0
    out = capsys.readouterr().out
    run_id = out.split("run ")[1].split()[0]
    assert "student acc" in out and "deepinversion" in out
    config = json.loads((tmp_path / "home" / "runs" / run_id / "config.json").read_text())
    assert config["synthesis"] == {"iterations": 20, "alpha_f": 0.5} and config["images"] == 100
    assert main(["--home", home, "--quiet", "distill", "--teacher", teacher, "--pool", run_id, "--steps", "20"]) == 0
    out = capsys.readouterr().out
    assert json.JSONDecoder().raw_decode(out[out.index("{"):])[0]["pool_size"] == 100
    with pytest.raises(SystemExit, match="neither a checkpoint file nor a run id"):
        main(["--home", home, "distill", "--teacher", teacher, "--pool", "no-such-run"])


def test_trajectory_kd_trains_the_student_on_every_inversion_iterate(digits_teacher):
    """trajectory_kd_from=k: one KD step per inversion iteration from k on, each on the batch being optimized."""
    job = run_distill(digits_teacher, "deepinversion", images=100, kd_steps_per_round=0, steps=10,
                   synthesis={"iterations": 12, "batch_size": 50}, options={"trajectory_kd_from": 4})
    assert job.method.student_steps() == 2 * (12 - 4) + 10
    assert job.result["student_steps"] == 2 * 8 + 10
    phases = [m.get("phase") for m in job.history]
    assert phases[:7] == ["synthesis"] * 5 + ["kd", "synthesis"]   # iterations 0..3 plain; from 4 on, S then KD
    assert phases[:20].count("kd") == 8 and phases[-10:] == ["kd"] * 10
    with pytest.raises(ValueError, match="half-resolution"):
        DistillJob(copy.deepcopy(digits_teacher), DistillConfig(
            method="deepinversion", options={"trajectory_kd_from": 2},
            synthesis={"multi_resolution_iterations": 5, "iterations": 10}))


def test_adi_trajectory_kd_hands_the_student_back_frozen_to_the_critic(digits_teacher):
    job = run_distill(digits_teacher, "adi", images=50, kd_steps_per_round=0, steps=5,
                   synthesis={"iterations": 6, "batch_size": 50}, options={"trajectory_kd_from": 3})
    assert job.result["student_steps"] == 3 + 5
    assert all(p.requires_grad for p in job.student.parameters())


def test_recipe_settings_yield_to_explicit_flags():
    from dfkd_core.cli import build_parser
    from dfkd_core.distill.recipes import RECIPES
    from dfkd_core.distill.cli import config_from_args
    args = build_parser().parse_args(["distill", "--teacher", "t.pt", "--method", "adi", "--recipe", "fashion-10min",
                                      "--steps", "5", "--inv-iterations", "7"])
    config = config_from_args(args)
    assert config.steps == 5 and config.synthesis["iterations"] == 7           # flags win
    recipe = RECIPES["fashion-10min"]["methods"]["adi"]
    assert config.synthesis["batch_size"] == recipe["synthesis"]["batch_size"]   # the rest from the recipe
    assert config.images == recipe["images"]
    assert config.options["trajectory_kd_from"] == 20
    plain = config_from_args(build_parser().parse_args(["distill", "--teacher", "t.pt", "--method", "adi"]))
    assert plain.steps == DistillConfig().steps and plain.options == {}


def test_a_recipe_run_in_float32_takes_the_recipe_s_float32_settings(monkeypatch, capsys):
    """fashion-5min was measured in bf16. A run that computes in float32 (a CPU without native bf16, or bf16 turned
    off) takes teacher echo 2 and 3,800 steps, measured on six pools (6 of 6 students at 0.95, 3 of 6 without) in
    the time of its 2,800 plain steps; the CLI says so, a flag given still wins, other recipes are left alone."""
    import dfkd_core.device as device
    from dfkd_core.cli import build_parser
    from dfkd_core.distill.cli import config_from_args

    def config(flags, native_bf16):
        monkeypatch.setattr(device, "cpu_computes_bf16", lambda: native_bf16)
        return config_from_args(build_parser().parse_args(["distill", "--teacher", "t.pt", "--device", "cpu",
                                                           *flags]))
    capsys.readouterr()
    native = config(["--recipe", "fashion-5min"], True)
    assert (native.teacher_echo, native.steps, native.cpu_bf16) == (1, 2800, True) and not native.runs_float32_on_cpu()
    assert "note:" not in capsys.readouterr().err
    for flags in (["--recipe", "fashion-5min"], ["--recipe", "fashion-5min", "--no-cpu-bf16"]):
        f32 = config(flags, native_bf16="--no-cpu-bf16" in flags)
        assert (f32.teacher_echo, f32.steps) == (2, 3800) and f32.runs_float32_on_cpu()
        err = capsys.readouterr().err
        assert "float32" in err and "(teacher echo 2, steps 3,800)" in err, err
    mine = config(["--recipe", "fashion-5min", "--steps", "3000"], False)
    assert (mine.teacher_echo, mine.steps) == (2, 3000)
    assert "settings (teacher echo 2)" in capsys.readouterr().err
    best = config(["--recipe", "fashion-best"], False)
    assert (best.teacher_echo, best.steps) == (1, 8000) and "note:" not in capsys.readouterr().err


@pytest.mark.parametrize("flags, named", [
    (["--method", "generator", "--lambda-bn", "nan"], "lambda_bn"),
    (["--method", "deepinversion", "--alpha-f", "nan"], "alpha_f"),
    (["--method", "deepdream", "--jitter", "-3"], "jitter"),
    (["--method", "generator", "--generator-lr", "inf"], "generator_lr"),
    (["--method", "noise", "--mixup", "nan"], "mixup"),
    (["--method", "noise", "--mixup", "0.6", "--cutmix", "0.6"], "cutmix"),
    (["--method", "noise", "--eval-every", "0"], "eval_every"),
    (["--method", "noise", "--latent-dim", "0"], "latent_dim"),
    (["--method", "noise", "--lambda-tv", "-1"], "lambda_tv"),
    (["--method", "iekd", "--option", "alpha_kd=nan"], "alpha_kd"),
    (["--method", "bss", "--option", "eps=inf"], "eps"),
    (["--method", "generator", "--alpha-f", "1"], "synthesizes no pool"),
    (["--method", "noise", "--student", "lenet5_half"], "16x16"),
    (["--method", "noise", "--student", "no_such_model"], "unknown student model"),
    (["--method", "noise", "--student", "pruned"], "not trained from scratch"),
    (["--method", "deepinversion", "--images", "0"], "images must be >= 1"),
    (["--method", "deepdream", "--jitter", "1000"], "jitter"),
])
def test_bad_settings_exit_with_one_sentence_and_create_no_run(tmp_path, digits_teacher, flags, named):
    """Issue 14 items 1 and 3: NaN, inf and out-of-range knobs are refused before a run exists (a NaN weight used
    to fail `weight > 0` and silently drop its term)."""
    home = tmp_path / "home"
    with pytest.raises(SystemExit) as refused:
        main(["--home", str(home), "--quiet", "distill", "--teacher", str(digits_teacher.path), *flags])
    message = str(refused.value)
    assert message.startswith("error: ") and named in message and "\n" not in message
    assert RunStore(home).list() == []


def test_every_method_option_class_refuses_non_finite_numbers(digits_teacher):
    for method, options in (("bss", {"eta": float("nan")}), ("iekd", {"lambda_exp": float("inf")}),
                            ("iedml", {"alpha_dml": float("nan")})):
        with pytest.raises(ValueError, match="finite"):
            DistillJob(digits_teacher, DistillConfig(method=method, options=options))
    with pytest.raises(ValueError, match="trajectory_kd_from"):
        DistillJob(digits_teacher, DistillConfig(method="deepinversion", options={"trajectory_kd_from": -5}))
    with pytest.raises(ValueError, match="eval_samples"):
        DistillJob(digits_teacher, DistillConfig(method="noise", eval_samples=0))


def test_real_data_is_read_where_the_user_says_never_where_the_teacher_was(tmp_path, monkeypatch):
    """Issue 14 item 10: a teacher's dataset carrying a stale root (another machine's path) must not win over
    $DFKD_IMAGEFOLDER; --data-root wins over both."""
    import dataclasses

    from tiny_imagefolder import lenet_teacher, make_imagefolder

    here = make_imagefolder(tmp_path / "here", per_class=2)
    teacher = lenet_teacher(here, tmp_path)
    teacher = dataclasses.replace(teacher, dataset=dataclasses.replace(teacher.dataset, root="/old/machine/data"))
    monkeypatch.setenv("DFKD_IMAGEFOLDER", str(here))
    job = DistillJob(teacher, DistillConfig(method="noise", student="lenet5_half", steps=1))
    assert len(job.real_split("test")) == 6
    flag = make_imagefolder(tmp_path / "flag", per_class=1)
    job = DistillJob(teacher, DistillConfig(method="noise", student="lenet5_half", steps=1, data_root=str(flag)))
    assert len(job.real_split("test")) == 3


def test_the_cli_says_where_a_folder_is_needed_and_where_a_recipe_was_measured(tmp_path, capsys, monkeypatch):
    from tiny_imagefolder import lenet_teacher, make_imagefolder

    from dfkd_core.cli import main
    monkeypatch.delenv("DFKD_IMAGEFOLDER", raising=False)
    root = make_imagefolder(tmp_path / "data", per_class=2)
    teacher = lenet_teacher(root, tmp_path)
    args = ["--home", str(tmp_path / "home"), "distill", "--teacher", str(teacher.path), "--method", "noise",
            "--student", "lenet5_half", "--steps", "2", "--recipe", "digits-quick"]
    with pytest.raises(SystemExit, match="scored on the real test images of the teacher's dataset: ImageFolder "
                                         "needs a data folder"):
        main(args)
    assert main(args + ["--data-root", str(root)]) == 0
    assert ("note: recipe digits-quick was measured on digits; this teacher is on imagefolder"
            in capsys.readouterr().err)


def test_the_live_phase_label_says_synthesizing_while_a_round_is_made(digits_teacher):
    """Trajectory KD steps happen during synthesis: they must not read as 'KD, 0 images synthesized'."""
    config = DistillConfig(method="deepinversion", images=40, kd_steps_per_round=2, steps=3, batch_size=16,
                           synthesis={"iterations": 4, "batch_size": 20}, options={"trajectory_kd_from": 1})
    job = DistillJob(copy.deepcopy(digits_teacher), config)
    job.setup()
    rows = [job.step(i) for i in range(job.total_steps)]
    said = [job.method.describe_step(m) for m in rows]
    assert rows[2]["phase"] == "kd" and said[2] == ("synthesizing round 1 of 2, inversion iteration 2 of 4; the "
                                                    "student learns from each half-formed batch")
    assert said[-1] == "the student learns by KD on the finished pool"
    assert job.method.describe_plan() == ("21 steps = 2 rounds × 4 inversion iterations + 13 student steps (3 on the "
                                          "finished pool, 4 after each round, 6 on half-formed batches)")
    assert job.trainer.steps_done == 13 and len(rows) == 21


def test_a_pool_whose_class_term_is_drowned_says_so_with_its_weights(digits_teacher):
    """The pool's rounds report how many images the teacher gives their class; where that is under half and the
    BN term outweighs the class term, the result names the weights to move (synthesis/diagnosis.py)."""
    def distill(alpha_f):
        config = DistillConfig(method="deepinversion", images=64, steps=5, kd_steps_per_round=0, seed=0,
                               synthesis={"batch_size": 64, "iterations": 30, "alpha_f": alpha_f, "alpha_ce": 0.01})
        job = DistillJob(copy.deepcopy(digits_teacher), config)
        job.run()
        assert job.status == "done", job.error
        return job.result
    drowned, sound = distill(100.0), distill(0.0)
    assert drowned["pool_teacher_agreement"] < 0.5
    assert "the BN term (α_f·R_feature = " in drowned["diagnosis"] and "Lower α_f or raise α_ce" in drowned["diagnosis"]
    assert sound["pool_teacher_agreement"] > drowned["pool_teacher_agreement"]
    assert sound.get("diagnosis", "") == "" or "BN term" not in sound["diagnosis"]


def test_pools_of_raw_pixels_or_foreign_classes_are_refused_and_repeats_are_counted(tmp_path, digits_teacher):
    """A uint8 pool and one of raw 0–16 pixels trained students to 10% with no word; targets out of range failed
    with IndexError mid-run; two pools of seeds 0 and 1 (batch k uses seed + k) shared 40 of 60 images unsaid."""
    info = digits_teacher.dataset
    images = info.normalize(torch.rand(6, 1, 8, 8))
    def pool(name, **payload):
        torch.save({"images": images, "targets": torch.arange(6), "dataset": info.to_dict(), **payload},
                   tmp_path / name)
        return tmp_path / name
    with pytest.raises(PoolError, match="holds torch.uint8 pixels"):
        SyntheticPool.load(pool("u8.pt", images=(torch.rand(6, 1, 8, 8) * 255).to(torch.uint8)), info)
    with pytest.raises(PoolError, match="raw pixels .* rather than normalized ones"):
        SyntheticPool.load(pool("raw.pt", images=torch.rand(6, 1, 8, 8) * 16), info)
    with pytest.raises(PoolError, match="targets from 0 to 11; the teacher has 10 classes"):
        SyntheticPool.load(pool("t.pt", targets=torch.tensor([0, 1, 2, 3, 4, 11])), info)
    a, b = pool("a.pt"), tmp_path / "b.pt"
    torch.save({"images": torch.cat([images[3:], info.normalize(torch.rand(3, 1, 8, 8))]), "targets": torch.arange(6),
                "dataset": info.to_dict()}, b)
    with pytest.warns(UserWarning, match="hold 12 images of which 9 are distinct"):
        combined = SyntheticPool.load([a, b], info)
    assert len(combined) == 12 and "seed + k" in combined.note
    assert SyntheticPool.load(a, info).note == ""
