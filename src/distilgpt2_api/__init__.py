"""distilgpt2-api: a serverless text-generation API for Hugging Face causal language models."""

__version__ = "0.1.0"
