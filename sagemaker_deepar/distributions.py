"""A fixed-scale Laplace output for torch: the negative log-likelihood is the L1 loss.

This is the built-in's ``deterministic-L1`` likelihood; GluonTS torch has no such output
(mxnet has ``LaplaceFixedVarianceOutput``). The module must stay importable by the server:
the serialized predictor refers to the class by its import path.
"""

from typing import Dict, Tuple

import torch
from gluonts.torch.distributions import DistributionOutput
from torch.distributions import Distribution, Laplace


class LaplaceFixedScaleOutput(DistributionOutput):
    args_dim: Dict[str, int] = {"loc": 1}
    distr_cls: type = Laplace

    @classmethod
    def domain_map(cls, loc: torch.Tensor):  # type: ignore[override]
        return (loc.squeeze(-1),)

    def _base_distribution(self, distr_args) -> Distribution:
        (loc,) = distr_args
        return Laplace(loc, torch.ones_like(loc))

    @property
    def event_shape(self) -> Tuple:
        return ()
