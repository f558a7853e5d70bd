"""Event-driven forecasting: S3 upload -> SNS -> SQS (+DLQ) -> Lambda, and a forecast API (see README)."""
