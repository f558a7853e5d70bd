"""The Flask app that `container/serve` hands to gunicorn (`predictor:app`).

All logic lives in sagemaker_deepar.serving (app.py chooses the app); this module only creates the app, so each gunicorn
worker loads the model once, in the background, when it imports this file.
"""

from sagemaker_deepar.serving.app import create_app

app = create_app()
