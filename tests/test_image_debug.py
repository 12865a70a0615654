import copy

import pytest
import torch

from dfkd_core.analysis.image_debug import (bn_layer_distances, bn_leave_one_out, class_probabilities, embed,
                                            feature_layer, nearest_real_images)
from dfkd_core.data import load_split


@pytest.fixture(scope="module")
def real():
    return load_split("digits", "train")


def test_class_probabilities_are_the_teachers_softmax(digits_teacher, real):
    teacher = copy.deepcopy(digits_teacher.model)
    x = real.normalized(slice(0, 4))
    probabilities = class_probabilities(teacher, x[2])
    assert probabilities.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert probabilities.argmax().item() == teacher(x).argmax(1)[2].item()


def test_an_outlier_pulls_every_bn_layer_away_and_a_real_image_barely_moves_them(digits_teacher, real):
    teacher = copy.deepcopy(digits_teacher.model)
    batch = real.normalized(slice(0, 63))
    batch = torch.cat([batch, torch.full_like(batch[:1], 4.0)])   # one saturated, unreal image last
    rows = bn_leave_one_out(teacher, batch, 63)
    assert [r["layer"] for r in rows] == list(bn_layer_distances(teacher, batch))
    assert all(r["delta"] == pytest.approx(r["with_image"] - r["without_image"]) for r in rows)
    assert rows[0]["delta"] > 0                                   # it pulls the first layer away from the data
    ordinary = bn_leave_one_out(teacher, batch, 5)
    assert abs(ordinary[0]["delta"]) < rows[0]["delta"] / 5
    with pytest.raises(ValueError, match="at least 2 images"):
        bn_leave_one_out(teacher, batch[:1], 0)


def test_a_real_image_is_its_own_nearest_neighbour(digits_teacher, real):
    teacher = copy.deepcopy(digits_teacher.model)
    layer = feature_layer(teacher, real.normalized(slice(0, 2)))
    features = embed(teacher, real, layer, batch_size=500)
    assert features.shape[0] == len(real) and torch.allclose(features.norm(dim=1), torch.ones(len(real)), atol=1e-5)
    found = nearest_real_images(features[17], features, real.labels, layer, k=3)
    assert found.indices[0].item() == 17 and found.similarity[0].item() == pytest.approx(1.0, abs=1e-5)
    assert found.labels[0] == real.labels[17] and found.searched == len(real)
