"""The ensemble forecaster (issue #22), what serving and training share: the quantile grid and the weighted
quantile average with its samples (``combine``, numpy only), the members and their settings (``members``), and
the served ensemble (``forecaster``, wrapped around the DeepAR runtime by ``runtimes/ensemble.py``). The train
job's backtests, selection and leaderboard are in ``sagemaker_deepar.training.ensemble``. See docs/ensemble.md.

A layer of its own, between the runtimes and the contract: it imports only the contract (and, inside
functions, statsforecast and GluonTS's NPTS), never torch.
"""
