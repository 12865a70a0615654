import pytest
import torch

from dfkd_core.models import load_checkpoint
from dfkd_core.runs import RunStore
from dfkd_core.training import TeacherConfig, train_teacher

# Tiny models on digits: one thread is faster than two (less synchronization) and leaves the other core to the
# app tests' server and job threads.
torch.set_num_threads(1)


@pytest.fixture
def store(tmp_path) -> RunStore:
    return RunStore(tmp_path / "home")


@pytest.fixture(scope="session")
def session_store(tmp_path_factory) -> RunStore:
    return RunStore(tmp_path_factory.mktemp("session_home"))


@pytest.fixture(scope="session")
def digits_teacher_job(session_store):
    """A real digits teacher, trained once per test session (~10 s on 2 cores)."""
    job = train_teacher(TeacherConfig(dataset="digits", epochs=20), session_store)
    assert job.status == "done", job.error
    return job


@pytest.fixture(scope="session")
def digits_teacher(digits_teacher_job):
    return load_checkpoint(digits_teacher_job.result["checkpoint"])


@pytest.fixture(scope="session")
def digits_student_checkpoint(session_store):
    """An untrained half-width student saved as a checkpoint (for ADI / CLI tests)."""
    from dfkd_core.data import dataset_info
    from dfkd_core.models import create_model, save_checkpoint
    info = dataset_info("digits")
    model = create_model("bncnn3_w16", 10, 1, 8)
    return save_checkpoint(session_store.home / "student.pt", model, info)
