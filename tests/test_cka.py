"""CKA (methods.md#cka): hand-computed case, invariances, independent reference implementations (Kornblith et al.'s own
code among them), accumulation, the layer × layer matrix on real digits models, and `dfkd cka`."""
import json
import math

import numpy as np
import pytest
import torch

from dfkd_core.analysis.cka import (cka, debiased_linear_cka, debiased_rbf_cka, describe_kernel, linear_cka,
                                    rbf_cka, unbiased_hsic)
from dfkd_core.analysis.cka_accumulators import LinearCKAAccumulator, MinibatchCKA
from dfkd_core.analysis.cka_matrix import CKAResult, cka_matrix
from dfkd_core.analysis.features import capture_features
from dfkd_core.data import load_split
from dfkd_core.models import create_model

KERNELS = ["linear", "rbf", "debiased", "debiased_rbf"]


# ---------------------------------------------------------------- independent straightforward implementations

def reference_cka(x: np.ndarray, y: np.ndarray, kernel: str = "linear", threshold: float = 1.0) -> float:
    """CKA = tr(KHLH) / sqrt(tr(KHKH) tr(LHLH)) with an explicit centering matrix H (Kornblith et al. 2019, eq. 3);
    the RBF bandwidth here is the 'offdiagonal' rule: σ = threshold × median distance over pairs i < j."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n

    def gram(a):
        if kernel == "linear":
            return a @ a.T
        d2 = np.array([[np.sum((a[i] - a[j]) ** 2) for j in range(n)] for i in range(n)])
        sigma = threshold * np.median([math.sqrt(d2[i, j]) for i in range(n) for j in range(i + 1, n)])
        return np.exp(-d2 / (2 * sigma ** 2))

    k, l = gram(x), gram(y)
    hsic = lambda a, b: np.trace(a @ h @ b @ h)  # noqa: E731
    return hsic(k, l) / math.sqrt(hsic(k, k) * hsic(l, l))


# Kornblith et al.'s reference code, transcribed to numpy: google-research/google-research,
# representation_similarity/Demo.ipynb (Apache 2.0), functions gram_rbf, center_gram and cka. The same operations in
# the same order, restated, so that "matches the reference" is checked against their computation, not ours.

def kornblith_gram_rbf(x: np.ndarray, threshold: float = 1.0) -> np.ndarray:
    dots = x.dot(x.T)
    sq_norms = np.diag(dots)
    sq_distances = -2 * dots + sq_norms[:, None] + sq_norms[None, :]
    sq_median_distance = np.median(sq_distances)          # all n² entries, the zero diagonal included
    return np.exp(-sq_distances / (2 * threshold ** 2 * sq_median_distance))


def kornblith_center_gram(gram: np.ndarray, unbiased: bool = False) -> np.ndarray:
    gram = gram.copy()
    n = gram.shape[0]
    if unbiased:
        np.fill_diagonal(gram, 0)
        means = np.sum(gram, 0, dtype=np.float64) / (n - 2)
        means -= np.sum(means) / (2 * (n - 1))
    else:
        means = np.mean(gram, 0, dtype=np.float64)
        means -= np.mean(means) / 2
    gram -= means[:, None]
    gram -= means[None, :]
    if unbiased:
        np.fill_diagonal(gram, 0)
    return gram


def kornblith_cka(gram_x: np.ndarray, gram_y: np.ndarray, debiased: bool = False) -> float:
    gram_x, gram_y = kornblith_center_gram(gram_x, debiased), kornblith_center_gram(gram_y, debiased)
    return gram_x.ravel().dot(gram_y.ravel()) / (np.linalg.norm(gram_x) * np.linalg.norm(gram_y))


def song_unbiased_hsic(k: np.ndarray, l: np.ndarray) -> float:
    """HSIC₁ exactly as written by Song et al. (2012), eq. 5: K̃, L̃ = K, L with zero diagonals."""
    n = len(k)
    kt, lt = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))
    one = np.ones(n)
    return (np.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * (one @ kt @ lt @ one)) / (n * (n - 3))


def random_orthogonal(p: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(p, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def correlated(n=60, p1=12, p2=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p1, generator=g, dtype=torch.float64)
    y = torch.tanh(x @ torch.randn(p1, p2, generator=g, dtype=torch.float64)) + 0.3 * torch.randn(n, p2, generator=g,
                                                                                                  dtype=torch.float64)
    return x, y


# ---------------------------------------------------------------- the formula and its invariances

def test_linear_cka_hand_computed_case():
    # X: four points on the axes (centered); Y: (1, 1, -1, -1), then shifted by 5 (centering must remove it).
    # XᵀX = 2I -> ||XᵀX||_F = 2√2; YᵀY = 4; YᵀX = (2, 2) -> ||YᵀX||² = 8; CKA = 8 / (2√2 · 4) = 1/√2.
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    y = torch.tensor([[1.0], [1.0], [-1.0], [-1.0]]) + 5.0
    assert linear_cka(x, y) == pytest.approx(0.7071067811865476, abs=1e-12)
    assert cka(x, y, "linear") == pytest.approx(0.7071067811865476, abs=1e-12)


@pytest.mark.parametrize("kernel", KERNELS)
def test_invariant_to_orthogonal_transforms_and_isotropic_scaling(kernel):
    x, _ = correlated(n=50, p1=20)
    q = random_orthogonal(20, seed=1)
    assert cka(x, x, kernel) == pytest.approx(1.0, abs=1e-10)
    assert cka(x, x @ q, kernel) == pytest.approx(1.0, abs=1e-10)
    assert cka(x, 3.7 * x, kernel) == pytest.approx(1.0, abs=1e-10)
    assert cka(x, -0.01 * x @ q, kernel) == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_values_lie_in_unit_interval_and_independent_features_score_low(kernel):
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        x, y = torch.randn(200, 10, generator=g), torch.randn(200, 6, generator=g)
        v = cka(x, y, kernel)
        assert 0.0 <= v <= 1.0
        assert v < 0.2
    x, y = correlated()
    assert 0.3 < cka(x, y, kernel) <= 1.0


def test_debiased_cka_of_independent_features_is_near_zero_where_biased_is_not():
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(40, 300, generator=g), torch.randn(40, 300, generator=g)  # wide, few samples
    assert linear_cka(x, y) > 0.5           # the bias Kornblith et al. warn about
    assert abs(debiased_linear_cka(x, y)) < 0.1


@pytest.mark.parametrize("shape", [(30, 7, 12), (10, 40, 25)])  # feature-space path, Gram-space path
def test_linear_cka_matches_explicit_centering_matrix_reference(shape):
    n, p1, p2 = shape
    x, y = correlated(n, p1, p2, seed=5)
    assert linear_cka(x, y) == pytest.approx(reference_cka(x.numpy(), y.numpy()), abs=1e-10)
    assert linear_cka(x.float(), y.float()) == pytest.approx(reference_cka(x.numpy(), y.numpy()), abs=1e-6)


@pytest.mark.parametrize("n", [25, 26])   # odd and even n² (numpy's median averages the two middle values)
@pytest.mark.parametrize("threshold", [0.5, 1.0, 2.0])
def test_rbf_cka_is_kornblith_et_al_reference_code(threshold, n):
    x, y = correlated(n, 6, 4, seed=6)
    gx, gy = kornblith_gram_rbf(x.numpy(), threshold), kornblith_gram_rbf(y.numpy(), threshold)
    assert rbf_cka(x, y, threshold) == pytest.approx(kornblith_cka(gx, gy), abs=1e-10)
    assert cka(x, y, "rbf", threshold) == pytest.approx(kornblith_cka(gx, gy), abs=1e-10)
    assert debiased_rbf_cka(x, y, threshold) == pytest.approx(kornblith_cka(gx, gy, debiased=True), abs=1e-10)
    # The earlier rule (σ = threshold × median distance over i < j) stays available under its own name.
    assert rbf_cka(x, y, threshold, bandwidth="offdiagonal") == pytest.approx(
        reference_cka(x.numpy(), y.numpy(), "rbf", threshold), abs=1e-10)


def test_the_reference_notebooks_printed_values():
    # Demo.ipynb's tutorial data and the values it prints: linear 0.55761, RBF (threshold 0.5) 0.65483, debiased
    # 0.51346. The earlier off-diagonal bandwidth gave 0.65401 for the RBF value.
    np.random.seed(1337)
    x = np.random.randn(100, 10)
    y = np.random.randn(100, 10) + x
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    assert round(linear_cka(x, y), 5) == 0.55761
    assert round(rbf_cka(x, y, 0.5), 5) == 0.65483
    assert round(debiased_linear_cka(x, y), 5) == 0.51346


def test_every_kernel_name_says_what_it_measures():
    assert describe_kernel("linear") == "linear CKA" and describe_kernel("debiased") == "debiased linear CKA"
    assert "median of all n² squared distances, Kornblith et al." in describe_kernel("rbf", 0.5)
    assert "threshold 0.5" in describe_kernel("rbf", 0.5)
    assert "distinct pairs" in describe_kernel("debiased_rbf", 1.0, "offdiagonal")


@pytest.mark.parametrize("shape", [(20, 5, 7), (8, 50, 60)])
def test_debiased_cka_matches_song_et_al_unbiased_hsic(shape):
    n, p1, p2 = shape
    x, y = correlated(n, p1, p2, seed=7)
    xc, yc = (x - x.mean(0)).numpy(), (y - y.mean(0)).numpy()
    k, l = xc @ xc.T, yc @ yc.T
    assert unbiased_hsic(torch.from_numpy(k), torch.from_numpy(l)) == pytest.approx(song_unbiased_hsic(k, l),
                                                                                   rel=1e-10)
    expected = song_unbiased_hsic(k, l) / math.sqrt(song_unbiased_hsic(k, k) * song_unbiased_hsic(l, l))
    assert debiased_linear_cka(x, y) == pytest.approx(expected, abs=1e-10)


def test_bad_inputs_get_clear_errors_and_constant_features_give_nan():
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match="same inputs"):
        linear_cka(x, torch.randn(9, 3))
    with pytest.raises(ValueError, match="NaN"):
        linear_cka(x, torch.full((10, 2), float("nan")))
    with pytest.raises(ValueError, match="at least 4"):
        debiased_linear_cka(x[:3], x[:3])
    with pytest.raises(ValueError, match="unknown CKA kernel"):
        cka(x, x, "cosine")
    assert math.isnan(linear_cka(x, torch.ones(10, 2)))
    assert linear_cka(x.view(10, 3, 1, 1), x) == pytest.approx(1.0)  # feature maps are flattened


# ---------------------------------------------------------------- accumulation over batches

def test_streaming_accumulation_equals_one_shot_even_with_large_means():
    x, y = correlated(n=503, p1=16, p2=11, seed=8)
    x, y = x + 1000.0, y - 250.0
    acc = LinearCKAAccumulator()
    for a, b in [(0, 100), (100, 117), (117, 400), (400, 503)]:
        acc.update(x[a:b].float(), y[a:b].float())
    assert acc.n == 503
    assert float(acc.value()[0, 0]) == pytest.approx(linear_cka(x.float(), y.float()), abs=1e-9)


def test_streaming_accumulation_of_several_layers_gives_the_pairwise_matrix():
    x1, y1 = correlated(n=120, seed=9)
    x2, y2 = correlated(n=120, p1=5, p2=3, seed=10)
    acc = LinearCKAAccumulator()
    for a in range(0, 120, 50):
        acc.update([x1[a:a + 50], x2[a:a + 50]], [y1[a:a + 50], y2[a:a + 50], x1[a:a + 50]])
    expected = torch.tensor([[linear_cka(x, y) for y in (y1, y2, x1)] for x in (x1, x2)], dtype=torch.float64)
    assert torch.allclose(acc.value(), expected, atol=1e-10)


def test_minibatch_cka_equals_debiased_on_one_batch_and_approaches_it_over_many():
    x, y = correlated(n=2000, p1=30, p2=20, seed=11)
    one = MinibatchCKA("debiased")
    one.update(x, y)
    assert float(one.value()[0, 0]) == pytest.approx(debiased_linear_cka(x, y), abs=1e-10)
    many = MinibatchCKA("debiased")
    for a in range(0, 2000, 200):
        many.update([x[a:a + 200]], [y[a:a + 200]])
    assert many.batches == 10 and many.n == 2000
    assert float(many.value()[0, 0]) == pytest.approx(debiased_linear_cka(x, y), abs=0.03)


def test_minibatch_estimator_refuses_to_be_named_after_biased_cka():
    for kernel in ("linear", "rbf"):
        with pytest.raises(ValueError, match="estimates debiased CKA"):
            MinibatchCKA(kernel)


@pytest.mark.parametrize("n", [40, 41])
def test_minibatch_rbf_uses_one_global_bandwidth_that_equals_the_reference_on_one_batch(n):
    x, y = correlated(n=n, p1=6, p2=5, seed=12)
    one = MinibatchCKA("debiased_rbf", threshold=0.7)
    one.update(x, y)
    assert float(one.value()[0, 0]) == pytest.approx(debiased_rbf_cka(x, y, 0.7), abs=1e-10)
    # Over batches the bandwidth is still the whole set's median, estimated from the within-batch pairs.
    x, y = correlated(n=1200, p1=6, p2=5, seed=13)
    many = MinibatchCKA("debiased_rbf")
    for a in range(0, 1200, 100):
        many.update(x[a:a + 100], y[a:a + 100])
    full = float(np.median(((x[:, None] - x[None]) ** 2).sum(-1).numpy()))
    assert float(many.bandwidths()[0]) == pytest.approx(full, rel=0.02)
    assert float(many.value()[0, 0]) == pytest.approx(debiased_rbf_cka(x, y), abs=0.03)


def test_minibatch_estimate_of_linear_cka_agrees_with_full_linear_cka():
    """A 'linear' request the minibatch estimator answers is named 'debiased' — the quantity it estimates — and agrees
    with the full-sample CKA of the same data within a stated tolerance.

    Tolerance 0.01, the sum of two measured parts rounded up: the minibatch's sampling noise (its own 95% interval
    over the 12 batches is ±0.0065 here) and the bias of biased linear CKA on n = 6,000 inputs of 12 + 8 features
    (full linear − full debiased = 0.0011). Measured: minibatch 0.2526, full linear 0.2534."""
    g = torch.Generator().manual_seed(14)
    x = torch.randn(6000, 12, generator=g, dtype=torch.float64)
    y = torch.tanh(x[:, :8] @ torch.randn(8, 8, generator=g, dtype=torch.float64)) + torch.randn(
        6000, 8, generator=g, dtype=torch.float64)
    images = torch.cat([x, y], 1)[:, None, None, :]   # one "image" per input; two identity models read its parts
    teacher, student = SliceModel(0, 12), SliceModel(12, 20)
    result = cka_matrix(teacher, student, ["part"], ["part"], images, estimator="minibatch", batch_size=500)
    assert (result.kernel, result.requested_kernel, result.estimator) == ("debiased", "linear", "minibatch")
    assert "estimates debiased CKA" in result.note
    full_linear, full_debiased = linear_cka(x, y), debiased_linear_cka(x, y)
    assert abs(full_linear - full_debiased) < 0.003
    assert result.value("part", "part") == pytest.approx(full_debiased, abs=0.01)
    assert result.value("part", "part") == pytest.approx(full_linear, abs=0.01)
    interval = result.interval("part", "part")
    assert interval.units == 12 and interval.half_width < 0.01 and "12 minibatches" in interval.method


class SliceModel(torch.nn.Module):
    """Returns columns [a, b) of its input as the 'part' layer: exact features for testing the matrix code."""

    def __init__(self, a: int, b: int):
        super().__init__()
        self.a, self.b = a, b
        self.part = torch.nn.Identity()
        self.anchor = torch.nn.Parameter(torch.zeros(1))   # a parameter gives the model a device

    def forward(self, x):
        return self.part(x.flatten(1)[:, self.a:self.b].double()) + 0 * self.anchor


# ---------------------------------------------------------------- the layer × layer matrix on models

@pytest.fixture(scope="module")
def digits_models():
    torch.manual_seed(0)
    split = load_split("digits", "test")
    return create_model("bncnn3_w32", 10, 1, 8), create_model("bncnn3_w16", 10, 1, 8), split


def test_matrix_of_a_model_with_itself_has_unit_diagonal(digits_models):
    teacher, _, split = digits_models
    result = cka_matrix(teacher, teacher, None, None, split, batch_size=128)
    assert result.layers_teacher == ["features.2", "features.6", "features.10", "classifier"]
    assert result.estimator == "full" and result.samples == len(split)
    assert torch.allclose(result.matrix.diagonal(), torch.ones(4, dtype=torch.float64), atol=1e-9)
    assert ((result.matrix >= 0) & (result.matrix <= 1 + 1e-9)).all()


def test_matrix_estimators_agree_with_pairwise_cka_on_captured_features(digits_models):
    teacher, student, split = digits_models
    teacher.train()  # the matrix must evaluate in eval mode and give the mode back
    layers_t, layers_s = ["features.2", "classifier"], ["features.6", "features.10"]
    ft = capture_features(teacher, layers_t, split)
    fs = capture_features(student, layers_s, split)
    for kernel in ("linear", "rbf", "debiased", "debiased_rbf"):
        full = cka_matrix(teacher, student, layers_t, layers_s, split, kernel=kernel, estimator="full", resamples=0)
        expected = torch.tensor([[cka(ft[a], fs[b], kernel) for b in layers_s] for a in layers_t])
        assert torch.allclose(full.matrix, expected.double(), atol=1e-6), kernel
    streaming = cka_matrix(teacher, student, layers_t, layers_s, split, estimator="streaming", batch_size=50,
                           resamples=0)
    assert torch.allclose(streaming.matrix, cka_matrix(teacher, student, layers_t, layers_s, split,
                                                       resamples=0).matrix, atol=1e-8)
    for kernel in ("debiased", "debiased_rbf"):
        one_batch = cka_matrix(teacher, student, layers_t, layers_s, split, estimator="minibatch",
                               batch_size=len(split), kernel=kernel, resamples=0)
        assert torch.allclose(one_batch.matrix, cka_matrix(teacher, student, layers_t, layers_s, split,
                                                           kernel=kernel, resamples=0).matrix, atol=1e-8), kernel
    assert teacher.training and not any(m._forward_hooks for m in teacher.modules())
    with pytest.raises(ValueError, match="Layers worth analyzing: .*features.2"):
        cka_matrix(teacher, student, ["features.99"], None, split)
    with pytest.raises(ValueError, match="exact linear CKA only"):
        cka_matrix(teacher, student, None, None, split, kernel="rbf", estimator="streaming")


def test_result_round_trips_through_json(digits_models):
    teacher, student, split = digits_models
    result = cka_matrix(teacher, student, ["features.2"], ["features.2", "classifier"], split, reduce="mean")
    again = CKAResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert torch.allclose(again.matrix, result.matrix) and again.reduce == "mean"
    assert again.value("features.2", "classifier") == pytest.approx(float(result.matrix[0, 1]))


# ---------------------------------------------------------------- CLI

def test_cli_cka_saves_an_analysis_run(digits_teacher, digits_student_checkpoint, tmp_path, capsys):
    from dfkd_core.cli import main
    from dfkd_core.runs import RunStore

    home = str(tmp_path / "home")
    assert main(["--home", home, "--quiet", "cka", "--teacher", digits_teacher.path, "--student",
                 str(digits_student_checkpoint), "--samples", "200", "--kernel", "debiased"]) == 0
    out = capsys.readouterr().out
    assert "debiased linear CKA, full estimator, 200 inputs" in out and "features.10" in out
    assert "[95% interval: half-sampling over inputs, 500 resamples]" in out
    run = RunStore(home).list(kind="analysis")[0]
    assert run.status == "done" and run.method == "cka" and run.dataset == "digits"
    saved = json.loads((run.dir / "cka.json").read_text())
    assert len(saved["matrix"]) == 4 and saved["kernel"] == "debiased" and len(saved["low"]) == 4
    result = CKAResult.from_dict(saved)
    assert all(result.interval(t, t).defined for t in result.layers_teacher)   # same architecture family
    diagonal = run.summary["cka_diagonal"]
    assert len(diagonal) == 4 and all(d["low"] <= d["estimate"] <= d["high"] for d in diagonal.values())
    assert run.summary["cka_last_pair_interval"]["units"] == 200
    assert json.loads((run.dir / "cka_heatmap.json").read_text())["data"][0]["type"] == "heatmap"
    with pytest.raises(SystemExit, match="no layer 'nope'"):
        main(["--home", home, "cka", "--teacher", digits_teacher.path, "--student", str(digits_student_checkpoint),
              "--layers-student", "nope"])
    with pytest.raises(SystemExit, match="cannot use inputs"):
        main(["--home", home, "cka", "--teacher", digits_teacher.path, "--student", str(digits_student_checkpoint),
              "--inputs", "no-such-run"])


def test_cli_cka_says_before_and_after_when_fewer_inputs_exist(digits_teacher, digits_student_checkpoint, tmp_path,
                                                               capsys):
    from dfkd_core.cli import main
    from dfkd_core.runs import RunStore

    home = str(tmp_path / "home")
    assert main(["--home", home, "--quiet", "cka", "--teacher", digits_teacher.path, "--student",
                 str(digits_student_checkpoint), "--samples", "1000", "--layers-teacher", "classifier",
                 "--layers-student", "classifier", "--resamples", "50", "--json"]) == 0
    out = capsys.readouterr().out
    note = "1,000 images asked, the digits test split has 360: all 360 are used"
    assert out.startswith(f"note: {note}")   # said before the run starts
    printed = json.loads(out[out.index("{"):])
    assert printed["samples"] == 360 and printed["samples_note"] == note
    assert printed["cka"]["resamples"] == 50 and printed["cka_last_pair_interval"]["units"] == 360
    run = RunStore(home).list(kind="analysis")[0]
    assert json.loads((run.dir / "cka.json").read_text())["samples_note"] == note


def test_the_reference_benchmark_reads_layer_i_against_layer_i(digits_teacher):
    from benchmark_scripts import load_benchmark
    from dfkd_core.data import load_split
    from dfkd_core.models.reference import untrained_reference
    bench = load_benchmark("cka_reference")
    inputs = load_split("digits", "test").subset(60)
    same = bench.diagonal(digits_teacher, digits_teacher, inputs)
    assert len(same) == 4 and all(cell.startswith("1.000 [") for cell in same)   # a model against itself
    reference = bench.diagonal(digits_teacher, untrained_reference("untrained:bncnn3_w16", digits_teacher), inputs)
    assert float(reference[-1].split()[0]) < 0.9   # an untrained network's logits are not the teacher's


def test_the_heatmap_writes_three_decimals_so_0996_is_not_read_as_one():
    from dfkd_core.plots.representations import cka_heatmap_figure
    figure = cka_heatmap_figure(torch.tensor([[0.996, 0.6], [float("nan"), 0.12345]]))
    assert [list(row) for row in figure.data[0].text] == [["0.996", "0.600"], ["", "0.123"]]


def test_too_few_inputs_for_half_sampling_give_no_interval_not_a_zero_width_one(digits_teacher):
    """Five inputs: halves of 2, whose linear CKA is 1 whatever the features; the interval was [0.998, 0.998]."""
    from dfkd_core.data import load_split
    from dfkd_core.models import create_model
    x = load_split("digits", "test").normalized(slice(0, 5))
    result = cka_matrix(digits_teacher.model, create_model("bncnn3_w16", 10, 1, 8).eval(), None, None, x)
    assert torch.isnan(result.low).all() and torch.isnan(result.high).all()
    assert result.interval_method.startswith("no interval: halves of 2 input(s) are too few")
    x = load_split("digits", "test").normalized(slice(0, 20))
    wide = cka_matrix(digits_teacher.model, create_model("bncnn3_w16", 10, 1, 8).eval(), None, None, x)
    assert not torch.isnan(wide.low).any() and (wide.high > wide.low).all()
