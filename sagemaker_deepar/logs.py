"""Logging shared by the train and serve jobs: one format, quiet libraries, no progress bars."""

import logging
import sys
import warnings


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="[%(asctime)s %(levelname)s %(name)s] %(message)s"
    )
    quiet_libraries()


def quiet_libraries() -> None:
    """Keep job logs readable: no progress bars, no per-batch library chatter."""
    from gluonts.env import env

    env._push(use_tqdm=False)
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "gluonts"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing")
