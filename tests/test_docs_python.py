"""docs/python.md's example runs as written: a notebook user's first contact with the library cannot rot."""
import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "python.md"


def test_the_python_guide_runs_as_written_and_stores_its_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DFKD_HOME", str(tmp_path / "home"))
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 1
    exec(compile(blocks[0], str(DOC), "exec"), {"__name__": "docs_python"})
    out = capsys.readouterr().out
    assert "BN distance" in out and "ratio" in out and "CKA at the logits" in out and "MagSim" in out
    from dfkd_core.runs import RunStore
    kinds = sorted(r.kind for r in RunStore(tmp_path / "home").list())
    assert kinds == ["distill", "teacher"]   # the synthesis ran without a store, as the guide says
