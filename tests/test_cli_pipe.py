"""`dfkd runs | head -1`: a reader that stops early ends the CLI quietly, not with a BrokenPipeError traceback."""
import os
import subprocess
import sys

ENTRY = "import sys; from dfkd_core.cli import main; sys.exit(main())"


def _run_into_closed_pipe(args: list[str]) -> subprocess.CompletedProcess:
    read_end, write_end = os.pipe()
    os.close(read_end)   # the reader has gone (head -1 after its line): every write fails with EPIPE
    try:
        return subprocess.run([sys.executable, "-c", ENTRY, *args], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    finally:
        os.close(write_end)


def test_runs_into_closed_pipe_exits_quietly(tmp_path):
    done = _run_into_closed_pipe(["--home", str(tmp_path / "home"), "runs"])
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    assert done.returncode in (0, 141), (done.returncode, done.stderr)


def test_help_into_closed_pipe_exits_quietly(tmp_path):
    done = _run_into_closed_pipe(["--home", str(tmp_path / "home"), "--help"])
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    assert done.returncode in (0, 141), (done.returncode, done.stderr)
