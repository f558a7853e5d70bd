"""The Lambda functions. They import neither torch nor GluonTS: only the standard library, numpy,
boto3/botocore (in the Lambda runtime), pyarrow for Parquet (a layer), ``sagemaker_deepar.contract`` and the
AWS layer's clients (``awsinfra.clients``: retries, ``AWS_ENDPOINT_URL``; bundled by serverless.package)."""
