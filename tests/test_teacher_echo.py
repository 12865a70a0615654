"""Data echoing in the KD loop (`teacher_echo`, issue 18): with k > 1 the teacher labels a fresh batch every k-th
step only, and every step trains on images drawn from the last k labelled batches, each with the logits the teacher
gave that very image; k = 1 is the plain loop. A resume continues an echoing run exactly."""
import copy

import pytest
import torch

from dfkd_core.device import prepare_input, prepare_model
from dfkd_core.distill import DistillConfig
from dfkd_core.distill.student import StudentTrainer
from dfkd_core.models import create_model

CPU = torch.device("cpu")


def _trainer(digits_teacher, echo: int, steps: int = 8):
    torch.manual_seed(0)
    student = prepare_model(create_model("bncnn3_w16", 10, 1, 8), CPU)
    teacher = prepare_model(copy.deepcopy(digits_teacher.model), CPU).eval()
    config = DistillConfig(method="deepinversion", mixup=0.5, cutmix=0.5, temperature=20.0, batch_size=16,
                           teacher_echo=echo)
    return StudentTrainer(student, teacher, config, digits_teacher.dataset, CPU, total_steps=steps), teacher, student


def _batches(count: int):
    images = torch.randn(count * 16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    return images.split(16)


def test_the_teacher_labels_every_kth_batch_and_each_echoed_image_keeps_its_own_logits(digits_teacher):
    trainer, teacher, student = _trainer(digits_teacher, echo=3)
    teacher_calls, student_inputs = [], []
    teacher.register_forward_hook(lambda *args: teacher_calls.append(1))
    student.register_forward_hook(lambda module, inputs, out: student_inputs.append(inputs[0].detach().clone()))
    for step, batch in enumerate(_batches(7)):
        before = len(teacher_calls)
        trainer.train_step(batch)
        assert len(teacher_calls) - before == (step % 3 == 0), "one teacher forward per 3 student steps"
        labelled = torch.cat([x for x, _ in trainer.echo_buffer])
        assert len(trainer.echo_buffer) == min(step // 3 + 1, 3)
        x = student_inputs[-1]
        assert x.shape == (16, 1, 8, 8)
        # every image the student saw this step is one the teacher labelled in the last 3 labelled batches...
        matches = (x.flatten(1)[:, None, :] == labelled.flatten(1)[None, :, :]).all(-1)
        assert matches.any(1).all()
        assert (matches.sum(0) <= 1).all(), "drawn without replacement"
        # ...and its logits are the teacher's for that image
        images, logits = trainer._echo_batch(4)
        with torch.no_grad():
            assert torch.allclose(teacher(images).float(), logits, atol=1e-5)
    assert trainer.steps_done == 7


def test_echo_one_is_the_plain_loop(digits_teacher):
    plain, teacher, _ = _trainer(digits_teacher, echo=1)
    calls = []
    teacher.register_forward_hook(lambda *args: calls.append(1))
    for batch in _batches(4):
        plain.train_step(batch)
    assert len(calls) == 4 and plain.echo_buffer == []


def test_an_echoing_run_resumes_exactly(digits_teacher):
    batches = _batches(8)
    straight, _, straight_student = _trainer(digits_teacher, echo=2)
    losses = [straight.train_step(b)["loss_kd"] for b in batches]

    first, _, _ = _trainer(digits_teacher, echo=2)
    for b in batches[:3]:   # stop in the middle of an echo: the buffer holds a batch not used up yet
        first.train_step(b)
    state = first.state_dict()
    resumed, _, resumed_student = _trainer(digits_teacher, echo=2)
    resumed.load_state_dict(state)
    resumed_losses = [resumed.train_step(b)["loss_kd"] for b in batches[3:]]
    assert resumed_losses == pytest.approx(losses[3:], abs=1e-6)
    probe = prepare_input(batches[0], CPU)
    straight_student.eval(), resumed_student.eval()
    with torch.no_grad():
        assert torch.allclose(straight_student(probe), resumed_student(probe), atol=1e-6)


def test_echo_refuses_steps_that_need_their_own_batch(digits_teacher):
    trainer, _, _ = _trainer(digits_teacher, echo=2)
    with pytest.raises(ValueError, match="teacher_echo 1"):
        trainer.train_step(_batches(1)[0], labels=torch.zeros(16, dtype=torch.long), force_ce=True)
    with pytest.raises(ValueError, match="teacher_echo must be >= 1"):
        DistillConfig(teacher_echo=0).validate()


@pytest.mark.parametrize("method", ["real-kd", "scratch", "iekd", "bss"])
def test_methods_whose_steps_need_their_own_batch_refuse_echo_before_a_run(digits_teacher, method):
    from dfkd_core.distill import DistillJob
    with pytest.raises(ValueError, match=f"method '{method}' trains each student step on its own batch"):
        DistillJob(digits_teacher, DistillConfig(method=method, teacher_echo=2))
