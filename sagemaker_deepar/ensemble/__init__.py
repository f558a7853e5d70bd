"""The ensemble forecaster (issue #22): classical members beside DeepAR, scored on backtest windows carved
from the end of the training series (``contract.backtest_cuts``), weighted by greedy ensemble selection and
combined by averaging their quantile functions. See docs/ensemble.md.

- ``combine``: the quantile grid, the weighted quantile average and the samples drawn from it (numpy only);
- ``members``: the members (seasonal naive, AutoETS, AutoTheta, NPTS over statsforecast / GluonTS; DeepAR);
- ``backtest``: the validation windows and every member's forecasts on them;
- ``selection``: greedy ensemble selection with replacement (Caruana et al., 2004);
- ``leaderboard``: the table in the log and ``leaderboard.json``;
- ``forecaster``: the served ensemble (members run per instance, a failing member left out for that instance).
"""
