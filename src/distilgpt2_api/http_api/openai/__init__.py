"""The OpenAI-compatible API: `/v1/completions`, `/v1/models`."""
