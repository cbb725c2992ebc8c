"""The HTTP surface: one folder per API (`native/`, `tgi/`, `openai/`, `responses/`, `anthropic/`,
`embeddings/`, `tokens/`), each a protocol
(schemas, and its one translation into the core's request) and routes, plus what they share: the app factory, errors,
API keys, body limit, dependencies, streaming."""
