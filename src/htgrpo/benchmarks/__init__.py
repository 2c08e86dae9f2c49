"""Real-image benchmarks (GenEval with Mask2Former, DPG-Bench) and image metrics usable as rewards.

Specification: ``../shared/design/benchmarks.md``. No weights ship with the project: every model loads from a
local directory (see :mod:`htgrpo.benchmarks.weights`), and a missing one is a :class:`~htgrpo.errors.WeightsError`
naming the metric and the files it expects.
"""
