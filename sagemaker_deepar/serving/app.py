"""The app `container/serve` hands to gunicorn (``container/predictor.py``): the one place that chooses it.

``SAGEMAKER_MULTI_MODEL=true``: the multi-model app (``multi_model_server``, the /models routes); otherwise the
single-model app (``server``). The hosting mode (``DEEPAR_HOSTING_MODE``: realtime, async, serverless) only
changes the settings both apps read (``server_config.hosting_defaults``).
"""

from __future__ import annotations

from typing import Optional

from flask import Flask

from ..logs import configure_logging
from .multi_model import multi_model_enabled
from .multi_model_server import create_multi_model_app
from .server import create_single_model_app
from .server_config import ServerConfig


def create_app(config: Optional[ServerConfig] = None) -> Flask:
    configure_logging()  # gunicorn workers have no handler of their own for our loggers
    config = config or ServerConfig.from_env()
    too_large = f"body larger than {config.max_payload_bytes // 2**20} MB (SAGEMAKER_MAX_PAYLOAD_IN_MB)"
    if multi_model_enabled():
        return create_multi_model_app(config, too_large)
    return create_single_model_app(config, too_large)
