"""The ensemble's part of the train job (issue #22): validation windows (``backtest``), greedy ensemble selection
(``selection``), the leaderboard (``leaderboard``) and the job's steps (``job``). What serving needs too (the
quantile combination, the members, the served forecaster) is in ``sagemaker_deepar.ensemble``; docs/ensemble.md.
"""
