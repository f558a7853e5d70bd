"""The Flask app that `container/serve` hands to gunicorn (`predictor:app`).

All logic lives in sagemaker_deepar.server; this module only creates the app, so each gunicorn
worker loads the model once, in the background, when it imports this file.
"""

import os

from sagemaker_deepar.server import create_app
from sagemaker_deepar.server_config import ServerConfig

app = create_app(ServerConfig.from_env(os.environ))  # each worker parses the settings once
