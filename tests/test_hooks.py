import torch
import torch.nn as nn

from dfkd_core.hooks import BNStatisticsRecorder, batchnorm_layers, channel_mean_and_variance
from dfkd_core.losses import bn_feature_loss
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


def _frozen_bn_model():
    torch.manual_seed(0)
    model = create_model("bncnn6_w16", 10, 1, 28).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):   # running statistics and affine parameters far from the defaults
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def test_channel_mean_and_variance_is_the_mean_and_biased_variance_over_batch_and_space():
    x = torch.randn(6, 3, 5, 4) * 2 + 1
    mean, var = channel_mean_and_variance(x)
    exact_var, exact_mean = torch.var_mean(x.double(), dim=(0, 2, 3), unbiased=False)
    assert torch.allclose(mean.double(), exact_mean, rtol=1e-5, atol=1e-6)
    assert torch.allclose(var.double(), exact_var, rtol=1e-5, atol=1e-6)
    flat = torch.randn(7, 3)   # BatchNorm1d input: statistics over the batch alone
    assert torch.allclose(channel_mean_and_variance(flat)[1], flat.var(0, unbiased=False), atol=1e-6)


def test_fused_statistics_equal_the_hooks_values_and_gradients():
    """The fused BatchNorm layer must compute what the hooked one does: the output, every layer's batch statistics
    and R_feature, and the gradient of (any function of the output + R_feature) with respect to the input."""
    model, x = _frozen_bn_model(), torch.randn(8, 1, 28, 28)
    results = []
    for fused in (False, True):
        batch = x.clone().requires_grad_(True)
        with BNStatisticsRecorder(model, fused=fused) as recorder:
            out = model(batch)
            stats = recorder.statistics()
            loss, per_layer = bn_feature_loss(stats, 10.0)
            assert recorder.fused_layers == ([n for n, _ in batchnorm_layers(model)] if fused else [])
        (out.square().sum() + loss).backward()
        results.append((out.detach(), per_layer.detach(), batch.grad, [s.batch_var for s in stats]))
    (hook_out, hook_layers, hook_grad, hook_vars), (out, layers, grad, variances) = results
    assert torch.allclose(out, hook_out, rtol=1e-5, atol=1e-5)
    assert torch.allclose(layers, hook_layers, rtol=1e-5)
    assert torch.allclose(grad, hook_grad, rtol=1e-4, atol=1e-6 * hook_grad.abs().max())
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(variances, hook_vars))
    assert all("forward" not in m.__dict__ for _, m in batchnorm_layers(model))   # the class's forward is back


def test_fused_recorder_hooks_the_layers_it_cannot_fuse():
    """A layer in training mode (or with trainable parameters) normalizes with batch statistics, which the fused
    eval-mode layer does not compute: it keeps its own forward and gets the hook."""
    model = _frozen_bn_model()
    names = [n for n, _ in batchnorm_layers(model)]
    model.features[1].train()
    with BNStatisticsRecorder(model, fused=True) as recorder:
        model(torch.randn(4, 1, 28, 28))
        assert recorder.fused_layers == names[1:] and len(recorder.statistics()) == len(names)
    assert recorder.fusable_layers() == names[1:]
