"""Tokenize and detokenize: what a prompt or a conversation costs in tokens, before sending it."""
