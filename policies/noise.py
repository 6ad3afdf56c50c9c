"""Noise for dp releases, from OpenDP's samplers (never Spark's ``rand()``, never a
hand-written floating-point Laplace).

* Sums and averages: OpenDP's Laplace mechanism over floats (``make_laplace`` on a vector
  domain with the L1 distance), which samples exactly on a discretised lattice and so does
  not leak through floating-point artefacts.
* Counts: OpenDP's discrete Laplace (``make_laplace`` over integers): the result is an
  integer, so a count never looks noisy by its decimals.

Accounting is pure ε-DP per measurement, added up over the measurements of a job
(sequential composition); DP partition selection adds δ (see :func:`selection_threshold`
and docs/privacy.md).
"""

from __future__ import annotations

import math
from functools import lru_cache

import opendp.prelude as dp

dp.enable_features("contrib")

# z such that P(|Laplace(b)| > z * b) = 5%: exp(-z) = 0.05.
CI95 = math.log(20.0)


@lru_cache(maxsize=256)
def _float_mechanism(scale: float):
    return dp.m.make_laplace(
        dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l1_distance(T=float), scale=scale
    )


@lru_cache(maxsize=256)
def _int_mechanism(scale: float):
    return dp.m.make_laplace(dp.vector_domain(dp.atom_domain(T=int)), dp.l1_distance(T=int),
                             scale=scale)


def laplace(values: list[float], scale: float) -> list[float]:
    """Each value plus Laplace(scale) noise (OpenDP)."""
    if not values:
        return []
    clean = [float(v) if v is not None and math.isfinite(float(v)) else 0.0 for v in values]
    return list(_float_mechanism(float(scale))(clean))


def discrete_laplace(values: list[int], scale: float) -> list[int]:
    """Each count plus discrete Laplace(scale) noise (OpenDP)."""
    if not values:
        return []
    return list(_int_mechanism(float(scale))([int(v) for v in values]))


def ci95(scale: float) -> float:
    """Half-width of the 95% interval of Laplace(scale) noise."""
    return CI95 * scale


def selection_threshold(scale: float, max_groups: int, delta: float) -> float:
    """Laplace partition selection: a group is released when its noisy count of distinct
    consumers reaches this threshold.

    A group that exists only because of one consumer has true count 1; it is released with
    probability ½·exp(-(τ - 1)/b). One consumer creates at most ``max_groups`` such groups,
    so δ = max_groups · ½·exp(-(τ - 1)/b), i.e. τ = 1 + b·ln(max_groups / (2δ)).
    """
    return 1.0 + scale * math.log(max_groups / (2.0 * delta))
