"""distilgpt2-api: a serverless text-generation API for Hugging Face causal language models."""

__version__ = "0.1.0"  # the one place: pyproject.toml reads it from here
