"""benchmarks/pool_coverage.py's measures, against hand-made teachers whose answers are known."""
import torch
import torch.nn as nn

from benchmark_scripts import load_benchmark


def _pool_coverage():
    return load_benchmark("pool_coverage")


class DetailTeacher(nn.Module):
    """Class 1 when an image's pixel-to-pixel differences (fine detail) outweigh its mean, else class 0."""

    def forward(self, x):
        detail = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
        return torch.stack([x.flatten(1).mean(1), detail], 1)


def test_a_class_carried_by_fine_detail_does_not_survive_the_blur_and_a_coarse_one_does():
    pc = _pool_coverage()
    checkerboard = ((torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2).float()
    images = torch.stack([torch.full((1, 8, 8), 0.5), checkerboard[None], checkerboard[None]])
    labels = torch.tensor([0, 1, 0])   # the third is checkerboard labelled 0: the teacher gets it wrong
    teacher = DetailTeacher()
    kept = pc.kept_under_blur(teacher, images, pc.probabilities(teacher, images), labels, sigma=1.0)
    assert kept[0] == 1.0 and kept[1] == 0.0
    assert torch.isnan(kept[2])   # images the teacher does not put in their class do not count


def test_coverage_is_the_cosine_with_the_nearest_pool_image():
    pc = _pool_coverage()
    real = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    pool = torch.tensor([[0.0, 1.0], [0.8, 0.6]])
    assert torch.allclose(pc.coverage(real, pool), torch.tensor([0.8, 0.96]))
