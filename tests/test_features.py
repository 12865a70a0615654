"""Layer discovery, activation capture and the active-neuron fraction (dfkd_core.analysis.features)."""
import pytest
import torch
import torch.nn as nn

from dfkd_core.analysis.features import (FeatureCapture, activation_density, active_neuron_fraction, batch_bounds,
                                         capture_features, default_attention_layer, iter_features, layer_names,
                                         neuron_firing_rates, resolve_layers)
from dfkd_core.data import load_split
from dfkd_core.models import create_model


def test_layer_names_list_blocks_in_execution_order():
    bncnn = create_model("bncnn6_w16", 10, 1, 28)
    assert layer_names(bncnn) == ["features.2", "features.5", "features.9", "features.12", "features.16",
                                  "features.19", "classifier"]
    assert layer_names(bncnn, "bn") == ["features.1", "features.4", "features.8", "features.11", "features.15",
                                        "features.18"]
    assert default_attention_layer(bncnn) == "features.19"
    lenet = create_model("lenet5", 10, 1, 28)
    # conv3's output is 1x1, so the last map worth a Grad-CAM is conv2's
    assert layer_names(lenet) == ["conv1.2", "conv2.2", "conv3.2", "fc1.1", "fc2"]
    assert default_attention_layer(lenet) == "conv2.2"
    resnet = create_model("resnet18_cifar", 10, 3, 32)
    assert layer_names(resnet)[:2] == ["layer1.0", "layer1.1"] and layer_names(resnet)[-1] == "linear"
    # torchvision's BasicBlock reuses one ReLU module twice: it has no single activation to capture
    tv = create_model("tv_resnet18", 10, 3, 32)
    assert "layer1.0.relu" not in layer_names(tv, "all") and "layer1.0" in layer_names(tv)
    with pytest.raises(RuntimeError, match="ran twice"):
        capture_features(tv, ["layer1.0.relu"], torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="unknown layer kind"):
        layer_names(bncnn, "pooling")


def test_resolve_layers_accepts_names_and_modules_and_lists_valid_names_on_error():
    model = create_model("bncnn3_w8", 10, 1, 8)
    assert resolve_layers(model, ["features.2", model.classifier]) == [("features.2", model.features[2]),
                                                                       ("classifier", model.classifier)]
    with pytest.raises(ValueError, match="no layer 'features.42'. Layers worth analyzing: features.0, features.1"):
        resolve_layers(model, ["features.42"])
    with pytest.raises(ValueError, match="not part of"):
        resolve_layers(model, [nn.ReLU()])


def test_capture_is_taken_before_a_following_in_place_relu_and_matches_a_manual_forward():
    torch.manual_seed(0)
    model = create_model("bncnn3_w8", 10, 1, 8).train()
    x = torch.randn(10, 1, 8, 8)
    feats = capture_features(model, ["features.1", "features.2"], x, batch_size=4)
    model.eval()
    with torch.no_grad():
        bn_out = model.features[:2](x)
    assert torch.allclose(feats["features.1"], bn_out.flatten(1), atol=1e-6)
    assert (feats["features.1"] < 0).any()                 # not overwritten by the in-place ReLU
    assert torch.allclose(feats["features.2"], bn_out.clamp_min(0).flatten(1), atol=1e-6)
    pooled = capture_features(model, ["features.2"], x, reduce="mean")["features.2"]
    assert pooled.shape == (10, 8) and torch.allclose(pooled, bn_out.clamp_min(0).mean((2, 3)), atol=1e-6)


def test_hooks_removed_and_mode_restored_even_when_iteration_stops_early_or_fails():
    model = create_model("bncnn3_w8", 10, 1, 8).train()
    stream = iter_features(model, ["features.2"], torch.randn(20, 1, 8, 8), batch_size=5)
    next(stream)
    assert not model.training
    stream.close()
    assert model.training and not any(m._forward_hooks for m in model.modules())
    with pytest.raises(RuntimeError):
        with FeatureCapture(model, ["features.2"]) as capture:
            capture(torch.randn(2, 3, 8, 8))  # wrong channel count
    assert not any(m._forward_hooks for m in model.modules())


def test_batches_never_end_with_fewer_than_four_inputs():
    assert batch_bounds(10, 4) == [(0, 4), (4, 10)]
    assert batch_bounds(12, 4) == [(0, 4), (4, 8), (8, 12)]
    assert batch_bounds(3, 100) == [(0, 3)]
    split = load_split("digits", "test")
    assert sum(len(b["features.2"]) for b in iter_features(create_model("bncnn3_w8", 10, 1, 8), ["features.2"],
                                                           split, batch_size=100)) == len(split)


class ThreeNeurons(nn.Module):
    """h = ReLU(W x) with W chosen so neuron 0 always fires, neuron 1 never, neuron 2 iff x > 0."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(1, 3)
        self.relu = nn.ReLU()
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor([[0.0], [0.0], [1.0]]))
            self.linear.bias.copy_(torch.tensor([1.0, -1.0, 0.0]))

    def forward(self, x):
        return self.relu(self.linear(x))


def test_active_neuron_fraction_by_hand():
    model = ThreeNeurons()
    x = torch.tensor([[-2.0], [-1.0], [0.5], [3.0]] * 5)   # half positive
    rates = neuron_firing_rates(model, "relu", x, batch_size=8)
    assert torch.equal(rates, torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64))
    assert active_neuron_fraction(model, "relu", x) == pytest.approx(2 / 3)
    assert active_neuron_fraction(model, "relu", x, min_share=0.6) == pytest.approx(1 / 3)
    assert active_neuron_fraction(model, "relu", x, threshold=0.6) == pytest.approx(2 / 3)  # 0.5 no longer counts


def test_active_neuron_fraction_on_conv_maps_uses_the_spatial_mean():
    conv = nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        conv.bias.zero_()
    model = nn.Sequential(conv, nn.ReLU())
    x = torch.zeros(4, 1, 3, 3)
    x[:, 0, 0, 0] = 1.0   # one bright pixel: channel 0 fires (mean > 0), channel 1 = ReLU(-x) is silent
    assert torch.equal(neuron_firing_rates(model, "1", x), torch.tensor([1.0, 0.0], dtype=torch.float64))
    # per unit: only (channel 0, pixel (0, 0)) of the 2 x 9 units ever fires
    units = neuron_firing_rates(model, "1", x, neuron="unit")
    assert units.shape == (18,) and float(units.sum()) == 1.0 and float(units[0]) == 1.0
    assert active_neuron_fraction(model, "1", x, neuron="unit") == pytest.approx(1 / 18)
    assert activation_density(model, "1", x) == pytest.approx(1 / 18)   # every input switches on 1 of 18 units
    with pytest.raises(ValueError, match="neuron must be one of"):
        neuron_firing_rates(model, "1", x, neuron="pixel")
