import json
import re

from dfkd_core.cli import main


def test_cli_train_synthesize_list(tmp_path, capsys):
    home = str(tmp_path / "home")
    assert main(["--home", home, "--quiet", "train-teacher", "--dataset", "digits", "--epochs", "3"]) == 0
    out = capsys.readouterr().out
    teacher_id = out.split("run ")[1].split()[0]
    assert json.loads(out[out.index("{"):])["test_accuracy"] > 0.5
    assert main(["--home", home, "--quiet", "synthesize", "--teacher", teacher_id, "--iterations", "5",
                 "--batch-size", "20", "--alpha-tv", "0.01", "--targets", "1,2"]) == 0
    capsys.readouterr()
    assert main(["--home", home, "runs"]) == 0
    table = capsys.readouterr().out
    assert re.search(r"test_accuracy=0\.\d+\[0\.\d+,(0\.\d+|1)\]", table)   # the teacher's accuracy with its interval
    assert main(["--home", home, "runs", "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    synth = next(r for r in runs if r["kind"] == "synthesis")
    assert synth["status"] == "done" and synth["teacher"] == teacher_id
    config = json.loads((tmp_path / "home" / "runs" / synth["id"] / "config.json").read_text())
    assert config["alpha_tv"] == 0.01 and config["targets"] == [1, 2] and config["iterations"] == 5


def test_cli_bad_teacher_and_no_bn_teacher(tmp_path, capsys):
    home = str(tmp_path / "home")
    bad = tmp_path / "bad.pt"
    bad.write_text("garbage")
    try:
        main(["--home", home, "synthesize", "--teacher", str(bad)])
    except SystemExit as e:
        assert "not a readable checkpoint" in str(e)
    else:
        raise AssertionError("expected a clear error")
    assert main(["--home", home, "--quiet", "train-teacher", "--model", "plaincnn3_w32", "--epochs", "1"]) == 0
    teacher_id = capsys.readouterr().out.split("run ")[1].split()[0]
    try:
        main(["--home", home, "synthesize", "--teacher", teacher_id, "--method", "deepinversion"])
    except SystemExit as e:
        assert "no BatchNorm" in str(e)
    else:
        raise AssertionError("expected a clear error")


def test_cli_missing_fashion_mnist(tmp_path, capsys, monkeypatch):
    from dfkd_core.data import datasets
    monkeypatch.setattr(datasets, "FASHION_MNIST_DEFAULT_ROOT", str(tmp_path / "not installed"))
    try:
        main(["--home", str(tmp_path), "train-teacher", "--dataset", "fashion-mnist", "--data-root", str(tmp_path)])
    except SystemExit as e:
        assert "apt-get install dataset-fashion-mnist" in str(e)
    else:
        raise AssertionError("expected a clear error")


import pytest  # noqa: E402


@pytest.mark.parametrize("flags, says", [
    (["--alpha-f", "nan"], "alpha_f must be a finite number"),
    (["--alpha-tv", "inf"], "alpha_tv must be a finite number"),
    (["--first-bn-multiplier", "nan"], "first_bn_multiplier must be a finite number"),
    (["--lr", "nan"], "lr must be a finite number"),
    (["--lr", "0"], "lr must be > 0"),
    (["--jitter", "-3"], "jitter"),
    (["--jitter", "1000"], "jitter 1000 is a shift of up to ±1000 pixels"),   # digits are 8x8
    (["--targets", "1,x"], "--targets takes comma-separated class indices"),
    (["--targets", "12"], "outside 0..9"),
    (["--method", "adi"], "needs a student"),
])
def test_synthesize_refuses_a_bad_setting_in_one_sentence_and_creates_no_run(session_store, digits_teacher_job,
                                                                            flags, says):
    before = len(session_store.list())
    with pytest.raises(SystemExit) as refused:
        main(["--home", str(session_store.home), "--quiet", "synthesize", "--teacher",
              digits_teacher_job.run_record.id, "--iterations", "2", *flags])
    message = str(refused.value)
    assert message.startswith("error: ") and says in message and "\n" not in message
    assert len(session_store.list()) == before   # a typo is not a failed run


def test_train_teacher_refuses_non_finite_lr_before_a_run_exists(tmp_path):
    home = tmp_path / "home"
    with pytest.raises(SystemExit, match="lr must be a finite number"):
        main(["--home", str(home), "--quiet", "train-teacher", "--lr", "nan"])
    assert not any((home / "runs").iterdir())


def test_every_command_prints_its_help(capsys):
    """argparse %-formats help texts: a recipe described as "95% of its teacher" once made `dfkd distill --help`
    raise instead of printing."""
    import argparse

    from dfkd_core.cli import build_parser
    commands = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)][0].choices
    for name in [None, *commands]:
        with pytest.raises(SystemExit) as exit_:
            main(["--help"] if name is None else [name, "--help"])
        assert exit_.value.code == 0, name
        assert "usage:" in capsys.readouterr().out


def test_a_cli_runs_config_loads_back_as_its_config(tmp_path, digits_teacher):
    """The CLI stores the teacher path and process count beside the settings; DistillConfig.load refused them."""
    from dfkd_core.distill import DistillConfig
    from dfkd_core.runs import RunStore
    home = str(tmp_path / "home")
    assert main(["--home", home, "--quiet", "distill", "--teacher", str(digits_teacher.path), "--method", "noise",
                 "--steps", "3"]) == 0
    run = RunStore(home).list(kind="distill")[0]
    config = DistillConfig.load(run.dir / "config.json")
    assert config.method == "noise" and config.steps == 3
