"""The Lambda functions. They import neither torch nor GluonTS: only the standard library, numpy,
boto3/botocore (in the Lambda runtime), pyarrow for Parquet (a layer) and ``sagemaker_deepar.contract``."""
