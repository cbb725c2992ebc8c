"""AWS Lambda entry point, as SAM names it: `handler.handler` (the package's aws_lambda/handler.py)."""

from distilgpt2_api.aws_lambda.handler import app, handler

__all__ = ["app", "handler"]
