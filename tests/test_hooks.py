import torch
import torch.nn as nn

from dfkd_core.hooks import BNStatisticsRecorder, batchnorm_layers
from dfkd_core.models import create_model


def test_recorder_captures_batch_mean_and_biased_variance_of_bn_input_and_removes_hooks():
    conv = nn.Conv2d(1, 2, 1)
    bn = nn.BatchNorm2d(2)
    model = nn.Sequential(conv, bn).eval()
    x = torch.randn(4, 1, 3, 3)
    with BNStatisticsRecorder(model) as rec:
        model(x)
        stats = rec.statistics()
    assert len(bn._forward_hooks) == 0
    features = conv(x).detach()
    assert torch.allclose(stats[0].batch_mean, features.mean(dim=(0, 2, 3)), atol=1e-6)
    biased = ((features - features.mean(dim=(0, 2, 3), keepdim=True)) ** 2).mean(dim=(0, 2, 3))
    assert torch.allclose(stats[0].batch_var, biased, atol=1e-6)
    assert stats[0].running_var is bn.running_var


def test_hooks_removed_even_when_forward_fails():
    model = create_model("bncnn3_w8", 10, 1, 8)
    try:
        with BNStatisticsRecorder(model):
            model(torch.randn(2, 3, 8, 8))  # wrong channel count
    except RuntimeError:
        pass
    assert all(len(m._forward_hooks) == 0 for _, m in batchnorm_layers(model))


def test_model_without_batchnorm_has_no_layers():
    assert batchnorm_layers(create_model("plaincnn3_w32", 10, 1, 8)) == []
