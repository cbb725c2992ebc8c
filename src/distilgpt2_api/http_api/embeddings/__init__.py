"""OpenAI's `POST /v1/embeddings`: sentence embeddings from the served model (llama.cpp's embedding mode)."""
