import json

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
        assert "not a readable PyTorch file" in str(e)
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


def test_cli_missing_fashion_mnist(tmp_path, capsys):
    try:
        main(["--home", str(tmp_path), "train-teacher", "--dataset", "fashion-mnist", "--data-root", str(tmp_path)])
    except SystemExit as e:
        assert "apt-get install dataset-fashion-mnist" in str(e)
    else:
        raise AssertionError("expected a clear error")
