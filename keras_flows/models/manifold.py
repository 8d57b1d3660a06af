"""`ManifoldFlow`: a flow on the unit sphere or the probability simplex."""

import numbers

import numpy as np
import keras
from keras import ops

from keras_flows.bijectors.base import Bijector
from keras_flows.bijectors.composition import Chain, Invert
from keras_flows.distributions import Distribution
from keras_flows.models.flow import Flow
from keras_flows.utils.backend import is_concrete

MANIFOLDS = ("sphere", "simplex")


def _members(bijector):
    """The bijectors a `Chain` or `Invert` is made of, recursively; others as they are."""
    if isinstance(bijector, Chain):
        return [m for b in bijector.bijectors for m in _members(b)]
    if isinstance(bijector, Invert):
        return _members(bijector.bijector)
    return [bijector]


@keras.saving.register_keras_serializable(package="keras_flows")
class ManifoldFlow(Flow):
    """A normalizing flow on the sphere S^(n-1) or the simplex S_K.

    log p(x) = log p_base(f(x)) + log V_f(x)

    where f maps the manifold to itself and V_f(x) is its differential volume
    ratio: the factor by which f scales an infinitesimal volume of the
    manifold at x (for an embedded map with Jacobian J and T an orthonormal
    basis of the tangent space at x, V_f = sqrt(det(T^T J^T J T))). The
    manifold bijectors (`NormalizedTranslation`, `NormalizedLinear`,
    `NormalizedAffine` on the sphere, `Calibration`, `GeneralizedCalibration`
    on the simplex) return log V_f as their log-det, so this is `Flow`'s
    formula with the bijector and base below. Densities are with respect to
    the surface measure on the sphere and Lebesgue measure on the first K-1
    coordinates on the simplex, as the base distributions'.

    Inputs are checked to lie on the manifold (by `log_prob`, `encode`,
    `decode`, `fit`, `evaluate` and `predict`, before any traced step), within
    `tolerance`: on the sphere | |x| - 1 | <= tolerance for every row; on the
    simplex every entry > 0 (the open simplex, where the calibration maps and
    the Dirichlet density are defined) and | sum_i x_i - 1 | <= tolerance.
    A point off the manifold raises a ValueError naming the row. An exported
    SavedModel does not check.

    Args:
        bijector: a manifold bijector, or a `Chain` of them, whose `manifold`
            attribute is `manifold`.
        base: a `Distribution` on the same manifold (`UniformSphere`,
            `VonMisesFisher`, `PowerSpherical`; `UniformSimplex`, `Dirichlet`),
            which gives the event shape.
        manifold: "sphere" or "simplex".
        tolerance: the largest accepted deviation of a row's norm (sphere) or
            sum (simplex) from 1; 1e-4 by default (float32 rounding is ~1e-7).

    Example:
        >>> flow = ManifoldFlow(Chain([NormalizedAffine(dim=3), NormalizedLinear(dim=3)]),
        ...                     base=VonMisesFisher(dim=3), manifold="sphere")
        >>> flow.compile(optimizer="adam"); flow.fit(unit_vectors, epochs=10)
        >>> flow.log_prob(u); flow.sample(1000, seed=0)
    """

    def __init__(self, bijector, base, manifold="sphere", tolerance=1e-4, **kwargs):
        for name in ("event_shape", "context_shape"):   # fixed by `base`; no context
            kwargs.pop(name, None)
        if manifold not in MANIFOLDS:
            raise ValueError(f"`manifold` must be 'sphere' or 'simplex'; got {manifold!r}.")
        if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real) \
                or not tolerance > 0 or not np.isfinite(tolerance):
            raise ValueError(f"`tolerance` must be a finite number > 0; got {tolerance!r}.")
        if not isinstance(bijector, Bijector):
            bijector = keras.saving.deserialize_keras_object(bijector)
        if not isinstance(base, Distribution):
            base = keras.saving.deserialize_keras_object(base)
        for member in _members(bijector):
            found = getattr(member, "manifold", None)
            if found != manifold:
                raise ValueError(
                    f"A ManifoldFlow on the {manifold} needs bijectors that map the "
                    f"{manifold} to itself (a `manifold = {manifold!r}` attribute); "
                    f"{type(member).__name__} {member.name!r} has "
                    f"{'none (it maps R^n)' if found is None else repr(found)}.")
        if getattr(base, "manifold", None) != manifold:
            raise ValueError(
                f"A ManifoldFlow on the {manifold} needs a base distribution on the "
                f"{manifold}; {type(base).__name__} has manifold "
                f"{getattr(base, 'manifold', None)!r}.")
        if len(base.event_shape) != 1:
            raise ValueError(f"The base's event shape must be (n,); got {base.event_shape}.")
        self.manifold = manifold
        self.tolerance = float(tolerance)
        super().__init__(bijector, event_shape=base.event_shape, base=base, **kwargs)

    def build(self, input_shape):
        # Flow.build's two zero rows lie off the manifold (0/0, log 0): a
        # concrete pass on its centre point instead.
        n = self.event_shape[0]
        point = np.eye(n)[0] if self.manifold == "sphere" else np.full(n, 1.0 / n)
        self._log_prob(ops.convert_to_tensor(np.stack([point, point]), self.compute_dtype))
        self.built = True

    def _validate(self, x, context, name="x", shape=None, finite=True):
        x, context = super()._validate(x, context, name=name, shape=shape, finite=finite)
        if finite and is_concrete(x):   # the public API and fit's data check
            self.check_on_manifold(x, name)
        return x, context

    def check_on_manifold(self, x, name="x"):
        """Raises a ValueError unless every row of the concrete `x` lies on the
        manifold within `tolerance` (see the class docstring)."""
        values = np.asarray(ops.convert_to_numpy(x), dtype="float64")
        if values.size == 0:
            return
        if self.manifold == "sphere":
            norms = np.sqrt(np.sum(values**2, axis=-1))
            bad = np.flatnonzero(np.abs(norms - 1.0) > self.tolerance)
            if bad.size:
                raise ValueError(
                    f"`{name}` must hold points of the unit sphere S^{self.event_shape[0] - 1}: "
                    f"rows of norm 1 within tolerance {self.tolerance:g}; {bad.size} row(s) "
                    f"are off it, the first, row {bad[0]}, with norm {norms[bad[0]]:.6g}. "
                    "Normalise the rows (x / |x|).")
            return
        rows, cols = np.nonzero(values <= 0)
        if rows.size:
            raise ValueError(
                f"`{name}` must hold points of the open simplex (entries > 0 summing to "
                f"1); {np.unique(rows).size} row(s) have entries <= 0, the first "
                f"{name}[{rows[0]}, {cols[0]}] = {values[rows[0], cols[0]]:.6g}. For "
                "probabilities that underflowed to 0, clip them (e.g. to 1e-7) and "
                "renormalise.")
        sums = np.sum(values, axis=-1)
        bad = np.flatnonzero(np.abs(sums - 1.0) > self.tolerance)
        if bad.size:
            raise ValueError(
                f"`{name}` must hold points of the simplex: rows summing to 1 within "
                f"tolerance {self.tolerance:g}; {bad.size} row(s) do not, the first, row "
                f"{bad[0]}, sums to {sums[bad[0]]:.6g}.")

    def get_config(self):
        config = super().get_config()
        config.pop("event_shape")
        config.pop("context_shape")
        config.update(manifold=self.manifold, tolerance=self.tolerance)
        return config
