"""One estimator per method family (algorithm.md §4.6, §5); ``build_estimator`` picks it by ``rl.method``."""

from __future__ import annotations

from htgrpo.config import RLConfig
from htgrpo.errors import ConfigError
from htgrpo.rl.estimators.base import Estimator, IterationPlan, RolloutRecord, random_masked
from htgrpo.rl.estimators.coupled import CoupledEstimator
from htgrpo.rl.estimators.d1 import D1Estimator
from htgrpo.rl.estimators.htgrpo import HTGRPOEstimator
from htgrpo.rl.estimators.maskgrpo import MaskGRPOEstimator
from htgrpo.rl.estimators.tracegrpo import TraceGRPOEstimator
from htgrpo.rl.estimators.unigrpo import UniGRPOEstimator

ESTIMATORS: dict[str, type[Estimator]] = {
    cls.name: cls
    for cls in (
        HTGRPOEstimator,
        MaskGRPOEstimator,
        UniGRPOEstimator,
        D1Estimator,
        TraceGRPOEstimator,
        CoupledEstimator,
    )
}


def build_estimator(rl: RLConfig) -> Estimator:
    try:
        return ESTIMATORS[rl.method](rl)
    except KeyError:
        raise ConfigError(
            f"unknown rl.method {rl.method!r}; expected one of {', '.join(ESTIMATORS)}"
        ) from None


__all__ = [
    "ESTIMATORS",
    "CoupledEstimator",
    "D1Estimator",
    "Estimator",
    "HTGRPOEstimator",
    "IterationPlan",
    "MaskGRPOEstimator",
    "RolloutRecord",
    "TraceGRPOEstimator",
    "UniGRPOEstimator",
    "build_estimator",
    "random_masked",
]
