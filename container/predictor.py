"""The Flask app that `container/serve` hands to gunicorn (`predictor:app`).

All logic lives in sagemaker_deepar.serving (app.py chooses the app); this module only creates the app, so each gunicorn
worker loads the model once, in the background, when it imports this file. It is the workers' entry point:
the serving settings are parsed here, once, from the environment `serve` gave them.
"""

import os

from sagemaker_deepar.serving.app import create_app
from sagemaker_deepar.serving.server_config import ServerConfig

app = create_app(ServerConfig.from_env(os.environ))
