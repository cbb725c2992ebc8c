"""The HTTP surface: one folder per API (`native/`, `openai/`), each a protocol (schemas) and routes,
plus what they share: the app factory, errors, API keys, body limit, dependencies."""
