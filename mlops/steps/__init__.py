"""The pipeline's processing-step scripts. Each runs in our image (``python3 <script>``), where
``sagemaker_deepar`` is installed; the pipeline ships ``ingestion/`` beside them (PYTHONPATH)."""
