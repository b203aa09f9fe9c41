"""Experiments: the demo and the paper's experiment, callable from Python with typed arguments.

- :func:`run_demo`: the whole story in one to two minutes on scikit-learn's digits (reference
  models, calibrated deletion requests, report, plots, TensorBoard logs); ``lightning-unlearn
  demo`` on the command line.
- :func:`run_reproduce`: the experiment of Sepahvand et al. (ICML 2025) on Fashion-MNIST;
  ``lightning-unlearn reproduce``.
- :mod:`~lightning_unlearn.experiments.pipeline`: their building blocks (train with the
  monitor, unlearn a forget set, retrain an oracle, the forget-set barrier, test metrics).
- :mod:`~lightning_unlearn.experiments.checkpoints` and
  :mod:`~lightning_unlearn.experiments.builders`: the checksummed model checkpoints, the
  bundled data sets and models by name.

Their reports are written by :mod:`lightning_unlearn.report`; every model is measured by
:func:`~lightning_unlearn.unlearning.result.evaluate_splits`.

Example:
    >>> from lightning_unlearn.experiments import run_demo
    >>> summary = run_demo("outputs/demo", epochs=2)  # doctest: +SKIP
"""

from lightning_unlearn.experiments.demo import run_demo
from lightning_unlearn.experiments.reproduce import run_reproduce

__all__ = ["run_demo", "run_reproduce"]
