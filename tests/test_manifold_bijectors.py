"""The checks every exported bijector of a manifold (sphere, simplex) gets.

The counterpart of test_bijectors.py for maps of a manifold to itself, whose
log-det is a log volume ratio on the manifold. `CASES` lists one or more
configurations per bijector with a `manifold` attribute; a test fails when
one has none. Weights are randomised after building, so that no check
passes because a layer starts at the identity.

Independent answers: float64 central differences of the ambient map
projected on orthonormal tangent bases (sphere), or of the first K-1
coordinates with p_K = 1 - sum (simplex, the Dirichlet's chart); the
angular central Gaussian density in closed form; quadrature and Monte Carlo
integrals of pushed-forward densities; scipy's softmax.
"""

import numpy as np
import keras
import pytest
import scipy.special
from keras import ops

import keras_flows as kf
from keras_flows import bijectors as kb

BACKEND = keras.backend.backend()

# name: (factory(dtype), manifold, dimension: n for S^(n-1) in R^n, K for the simplex)
CASES = {
    "NormalizedTranslation": (lambda d: kb.NormalizedTranslation(3, dtype=d), "sphere", 3),
    "NormalizedTranslation[S1]": (lambda d: kb.NormalizedTranslation(2, dtype=d), "sphere", 2),
    "NormalizedLinear": (lambda d: kb.NormalizedLinear(4, dtype=d), "sphere", 4),
    "NormalizedLinear[S1]": (lambda d: kb.NormalizedLinear(2, dtype=d), "sphere", 2),
    "NormalizedAffine": (lambda d: kb.NormalizedAffine(3, dtype=d), "sphere", 3),
    "NormalizedAffine[S1]": (lambda d: kb.NormalizedAffine(2, dtype=d), "sphere", 2),
    "Calibration": (lambda d: kb.Calibration(4, dtype=d), "simplex", 4),
    "Calibration[temperature]": (lambda d: kb.Calibration(3, shift=False, dtype=d),
                                 "simplex", 3),
    "GeneralizedCalibration": (lambda d: kb.GeneralizedCalibration(4, dtype=d), "simplex", 4),
    "GeneralizedCalibration[K2]": (lambda d: kb.GeneralizedCalibration(2, dtype=d),
                                   "simplex", 2),
}


def numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


def points(manifold, dim, n, seed=0, dtype="float32"):
    rng = np.random.default_rng(seed + 100)
    if manifold == "sphere":
        x = rng.normal(size=(n, dim))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    else:
        x = rng.dirichlet(np.full(dim, 2.0), size=n)
    return x.astype(dtype)


def make(name, dtype="float32", seed=0):
    """The case's bijector, built, with every trainable weight randomised."""
    factory, manifold, dim = CASES[name]
    bijector = factory(dtype)
    bijector.forward(points(manifold, dim, 2, dtype=dtype))
    rng = np.random.default_rng(seed)
    for w in bijector.trainable_weights:
        w.assign(rng.normal(scale=0.5, size=w.shape).astype(dtype))
    return bijector


def on_manifold(manifold, x, atol):
    if manifold == "sphere":
        np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=atol)
    else:
        assert np.all(x > 0)
        np.testing.assert_allclose(x.sum(axis=1), 1.0, atol=atol)


def tangent_basis(x):
    """An orthonormal basis (n, n-1) of the tangent space x^perp at x on the sphere."""
    return np.linalg.svd(x[None, :])[2][1:].T


def numerical_log_ratio(fn, manifold, x, eps=1e-6):
    """log volume ratio of `fn` at each row of `x` (float64), independently:

    sphere: log|det(E_y^T J E_x)|, J by central differences of the ambient
    map along an orthonormal tangent basis E_x at x, E_y one at y = fn(x);
    simplex: log|det dq'/dp'| over the first K-1 coordinates, p_K = 1 - sum.
    One call of `fn` on every perturbed point of every row.
    """
    n, k = x.shape
    if manifold == "sphere":
        steps = np.stack([eps * tangent_basis(row).T for row in x])        # (n, k-1, k)
    else:
        steps = np.broadcast_to(
            np.concatenate([eps * np.eye(k - 1), -eps * np.ones((k - 1, 1))], 1),
            (n, k - 1, k))
    batch = np.concatenate([x[:, None] + steps, x[:, None] - steps, x[:, None]], axis=1)
    values = numpy(fn(batch.reshape(-1, k))).reshape(n, 2 * k - 1, k)
    plus, minus, y = values[:, :k - 1], values[:, k - 1:2 * k - 2], values[:, -1]
    out = []
    for i in range(n):
        columns = ((plus[i] - minus[i]) / (2 * eps)).T                      # (k, k-1)
        if manifold == "sphere":
            jac = tangent_basis(y[i]).T @ columns                           # E_y^T J E_x
        else:
            jac = columns[:k - 1]                                           # dq'_i / dp'_j
        out.append(np.linalg.slogdet(jac)[1])
    return np.array(out)


def test_every_manifold_bijector_has_a_case():
    exported = {n for n in kb.__all__ if getattr(getattr(kb, n), "manifold", None)}
    covered = {name.split("[")[0] for name in CASES}
    assert exported == covered, f"no checks for {exported - covered}"
    for name in exported:
        assert getattr(kb, name).manifold in ("sphere", "simplex")
    for name, (factory, manifold, _) in CASES.items():
        assert factory("float32").manifold == manifold


@pytest.mark.parametrize("name", CASES)
def test_starts_as_the_identity(name):
    factory, manifold, dim = CASES[name]
    bijector = factory("float64")
    x = points(manifold, dim, 8, dtype="float64")
    y, log_ratio = bijector.forward(x)
    np.testing.assert_allclose(numpy(y), x, atol=1e-12)
    np.testing.assert_allclose(numpy(log_ratio), 0.0, atol=1e-12)


@pytest.mark.parametrize("name", CASES)
def test_round_trip_and_outputs_on_the_manifold(name):
    _, manifold, dim = CASES[name]
    bijector = make(name)
    x = points(manifold, dim, 32)
    y, fwd = bijector.forward(x)
    on_manifold(manifold, numpy(y), atol=1e-5)
    x2, inv = bijector.inverse(y)
    np.testing.assert_allclose(numpy(x2), x, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(numpy(fwd) + numpy(inv), 0.0, atol=1e-4)
    assert tuple(fwd.shape) == (32,) and tuple(inv.shape) == (32,)

    y = points(manifold, dim, 32, seed=1)
    x, _ = bijector.inverse(y)
    on_manifold(manifold, numpy(x), atol=1e-5)
    np.testing.assert_allclose(numpy(bijector.forward(x)[0]), y, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", CASES)
def test_log_ratio_matches_tangent_space_jacobian_in_float64(name):
    _, manifold, dim = CASES[name]
    bijector = make(name, dtype="float64")
    x = points(manifold, dim, 4, dtype="float64")
    y, log_ratio = bijector.forward(x)
    for t in (y, log_ratio):
        assert keras.backend.standardize_dtype(t.dtype) == "float64"
    expected = numerical_log_ratio(lambda v: bijector.forward(v)[0], manifold, x)
    np.testing.assert_allclose(numpy(log_ratio), expected, atol=1e-6)

    y = numpy(y)
    x2, inv_log_ratio = bijector.inverse(y)
    for t in (x2, inv_log_ratio):
        assert keras.backend.standardize_dtype(t.dtype) == "float64"
    expected = numerical_log_ratio(lambda v: bijector.inverse(v)[0], manifold, y)
    np.testing.assert_allclose(numpy(inv_log_ratio), expected, atol=1e-6)
    np.testing.assert_allclose(numpy(inv_log_ratio), -numpy(log_ratio), atol=1e-10)
    np.testing.assert_allclose(numpy(x2), x, atol=1e-12)


@pytest.mark.parametrize("name", [n for n in CASES if n.endswith("[S1]")])
def test_pushed_forward_uniform_density_integrates_to_one_on_the_circle(name):
    # p_Y(y) = p_X(f^-1(y)) * exp(inverse log ratio at y); p_X uniform = 1/(2 pi).
    # The trapezoid rule on a periodic smooth integrand converges geometrically.
    bijector = make(name, dtype="float64")
    theta = np.linspace(0.0, 2 * np.pi, 2000, endpoint=False)
    y = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    _, inv_log_ratio = bijector.inverse(y)
    integral = np.mean(np.exp(numpy(inv_log_ratio)))   # (1/2pi) * sum * (2pi/N)
    np.testing.assert_allclose(integral, 1.0, atol=1e-8)


@pytest.mark.parametrize("name", ["NormalizedTranslation", "NormalizedAffine"])
def test_pushed_forward_uniform_density_integrates_to_one_on_s2(name):
    # E_{y ~ uniform}[exp(inverse log ratio at y)] = 1; Monte Carlo, 5 standard errors.
    bijector = make(name, dtype="float64")
    y = points("sphere", 3, 40000, seed=7, dtype="float64")
    ratios = np.exp(numpy(bijector.inverse(y)[1]))
    error = 5 * ratios.std() / np.sqrt(len(ratios))
    assert abs(ratios.mean() - 1.0) < error, (ratios.mean(), error)


def test_normalized_linear_gives_the_angular_central_gaussian():
    # x uniform on S^(n-1), y = M x / ||M x|| ~ ACG(Sigma = M M^T), whose density
    # (w.r.t. surface measure) is |Sigma|^(-1/2) (y^T Sigma^-1 y)^(-n/2) / |S^(n-1)|
    # (Tyler 1987). So inverse log ratio = log density ratio to the uniform.
    bijector = make("NormalizedLinear", dtype="float64", seed=3)
    m = numpy(bijector.matrix())
    sigma = m @ m.T
    y = points("sphere", 4, 16, seed=2, dtype="float64")
    quad = np.einsum("bi,ij,bj->b", y, np.linalg.inv(sigma), y)
    expected = -0.5 * np.linalg.slogdet(sigma)[1] - 0.5 * 4 * np.log(quad)
    np.testing.assert_allclose(numpy(bijector.inverse(y)[1]), expected, atol=1e-10)
    # As a density of the data x (uniform latent): ACG with Sigma' = (M^T M)^-1.
    x = points("sphere", 4, 16, seed=3, dtype="float64")
    sigma_x = np.linalg.inv(m.T @ m)
    quad = np.einsum("bi,ij,bj->b", x, np.linalg.inv(sigma_x), x)
    expected = -0.5 * np.linalg.slogdet(sigma_x)[1] - 0.5 * 4 * np.log(quad)
    np.testing.assert_allclose(numpy(bijector.forward(x)[1]), expected, atol=1e-10)
    # And the matrix is the dense map: y = M x / ||M x||.
    mx = x @ m.T
    np.testing.assert_allclose(numpy(bijector.forward(x)[0]),
                               mx / np.linalg.norm(mx, axis=1, keepdims=True), atol=1e-12)


def test_affine_translation_is_the_given_formula():
    # y = (M x + c) / ||M x + c|| with the layer's own M and c = translation_vector(),
    # ||M^-1 c|| < 1 (the bijection condition), and ||c|| < 1 for the translation.
    affine = make("NormalizedAffine", dtype="float64", seed=4)
    m, c = numpy(affine.matrix()), numpy(affine.translation_vector())
    assert np.linalg.norm(np.linalg.solve(m, c)) < 1
    x = points("sphere", 3, 16, dtype="float64")
    g = x @ m.T + c
    np.testing.assert_allclose(numpy(affine.forward(x)[0]),
                               g / np.linalg.norm(g, axis=1, keepdims=True), atol=1e-12)
    translation = make("NormalizedTranslation", dtype="float64", seed=5)
    translation.translation.assign(np.array([30.0, -40.0, 10.0]))   # raw weight far out
    c = numpy(translation.translation_vector())
    assert 0.99 < np.linalg.norm(c) < 1
    g = x + c
    y = numpy(translation.forward(x)[0])
    np.testing.assert_allclose(y, g / np.linalg.norm(g, axis=1, keepdims=True), atol=1e-12)
    np.testing.assert_allclose(numpy(translation.inverse(y)[0]), x, atol=1e-9)


def test_temperature_scaling_is_the_special_case():
    for shift in (False, True):
        cal = kb.Calibration(3, shift=shift, dtype="float64")
        cal.build((None, 3))
        cal.log_a.assign(np.log(2.5))
        p = points("simplex", 3, 16, dtype="float64")
        if shift:
            cal.shift.assign(np.array([0.3, -1.0, 0.2]))
            logits = np.log(p) / 2.5 + np.array([0.3, -1.0, 0.2])
        else:
            assert [w.name for w in cal.trainable_weights] == ["log_a"]
            logits = np.log(p) / 2.5
        np.testing.assert_allclose(numpy(cal.forward(p)[0]),
                                   scipy.special.softmax(logits, axis=1), atol=1e-12)


def test_two_generalized_calibrations_compose_into_one():
    p = points("simplex", 4, 16, dtype="float64")
    first = make("GeneralizedCalibration", dtype="float64", seed=1)
    second = make("GeneralizedCalibration", dtype="float64", seed=2)
    scalar = make("Calibration", dtype="float64", seed=3)
    for a, b in ((first, second), (second, first), (scalar, first), (first, scalar)):
        composed = kb.GeneralizedCalibration.compose(a, b)
        assert isinstance(composed, kb.GeneralizedCalibration)
        middle, log_ratio_a = a.forward(p)
        q, log_ratio_b = b.forward(middle)
        q2, log_ratio = composed.forward(p)
        np.testing.assert_allclose(numpy(q2), numpy(q), atol=1e-12)
        np.testing.assert_allclose(numpy(log_ratio), numpy(log_ratio_a + log_ratio_b),
                                   atol=1e-10)
        # The stated rule on the K x K matrices: A = A2 A1, c = A2 c1 + c2.
        a1, a2 = numpy(a.matrix()), numpy(b.matrix())
        c1, c2 = numpy(a.shift), numpy(b.shift)
        logits = np.log(p) @ (a2 @ a1).T + a2 @ c1 + c2
        np.testing.assert_allclose(numpy(q2), scipy.special.softmax(logits, axis=1),
                                   atol=1e-12)
    # A generalized calibration with A = I / a and the same c is the scalar one.
    same = kb.GeneralizedCalibration(4, dtype="float64")
    same.build((None, 4))
    same.matrix_weight.assign(np.eye(3) * np.exp(-numpy(scalar.log_a)))
    same.shift.assign(numpy(scalar.shift))
    np.testing.assert_allclose(numpy(same.forward(p)[0]), numpy(scalar.forward(p)[0]),
                               atol=1e-12)
    np.testing.assert_allclose(numpy(same.forward(p)[1]), numpy(scalar.forward(p)[1]),
                               atol=1e-10)
    with pytest.raises(ValueError, match="same number of classes"):
        kb.GeneralizedCalibration.compose(first, make("Calibration[temperature]"))
    with pytest.raises(ValueError, match="built"):
        kb.GeneralizedCalibration.compose(first, kb.GeneralizedCalibration(4))


def test_random_initializers_start_off_the_identity_and_survive_the_config():
    init = {"class_name": "RandomNormal", "config": {"stddev": 0.3, "seed": 1}}
    for layer in (kb.NormalizedTranslation(3, translation_initializer=init),
                  kb.NormalizedLinear(3, matrix_initializer=init),
                  kb.NormalizedAffine(3, matrix_initializer="zeros",
                                      translation_initializer=init)):
        x = points("sphere", 3, 4)
        y = numpy(layer.forward(x)[0])
        assert np.abs(y - x).max() > 1e-3
        clone = type(layer).from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()
        np.testing.assert_allclose(numpy(clone.forward(x)[0]), y, atol=1e-6)


@pytest.mark.parametrize("make_bad, match", [
    (lambda: kb.Calibration(1), "num_classes"),
    (lambda: kb.Calibration(2.5), "num_classes"),
    (lambda: kb.Calibration(3, shift="yes"), "shift"),
    (lambda: kb.GeneralizedCalibration(0), "num_classes"),
    (lambda: kb.GeneralizedCalibration(True), "num_classes"),
    (lambda: kb.NormalizedTranslation(1), "dim"),
    (lambda: kb.NormalizedLinear("3"), "dim"),
    (lambda: kb.NormalizedAffine(None), "dim"),
])
def test_bad_constructor_arguments_raise(make_bad, match):
    with pytest.raises(ValueError, match=match):
        make_bad()


@pytest.mark.parametrize("name", ["NormalizedAffine", "GeneralizedCalibration"])
def test_wrong_input_shape_raises(name):
    bijector = CASES[name][0]("float32")
    with pytest.raises(ValueError, match="expected input shape"):
        bijector.forward(np.full((2, 5), 0.2, "float32"))


@pytest.mark.parametrize("name", CASES)
def test_save_and_load_round_trip(name, tmp_path):
    _, manifold, dim = CASES[name]
    flow = kf.Flow(make(name), event_shape=(dim,))
    path = str(tmp_path / "flow.keras")
    flow.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.bijector) is type(flow.bijector)
    assert loaded.bijector.get_config() == flow.bijector.get_config()
    x = points(manifold, dim, 8)
    np.testing.assert_array_equal(numpy(loaded.log_prob(x)), numpy(flow.log_prob(x)))
    y = points(manifold, dim, 8, seed=1)
    for a, b in zip(loaded.bijector.inverse(y), flow.bijector.inverse(y)):
        np.testing.assert_array_equal(numpy(a), numpy(b))


# torch.compile takes about a minute per model on CPU: every class is compiled
# once, in one chain per manifold (the same on every backend).
JIT_CHAINS = {
    "sphere": (lambda: [make("NormalizedTranslation", seed=1), make("NormalizedAffine", seed=2),
                        kb.NormalizedLinear(3)], 3),
    "simplex": (lambda: [make("Calibration", seed=1), make("GeneralizedCalibration", seed=2)], 4),
}


@pytest.mark.parametrize("manifold", list(JIT_CHAINS))
def test_fit_and_predict_under_jit(manifold):
    layers, dim = JIT_CHAINS[manifold]
    flow = kf.Flow(kb.Chain(layers()), event_shape=(dim,))
    x = points(manifold, dim, 64)
    flow.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
    before = [numpy(w) for w in flow.trainable_weights]
    history = flow.fit(x, batch_size=32, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert all(np.all(np.isfinite(numpy(w))) for w in flow.trainable_weights)
    assert any(not np.allclose(numpy(w), b) for w, b in zip(flow.trainable_weights, before))
    predicted = flow.predict(x, batch_size=64, verbose=0)
    np.testing.assert_allclose(predicted, numpy(flow.log_prob(x)), rtol=1e-4, atol=1e-4)
