"""The generation core: what to generate (request), how requests take turns (scheduler), stop strings and budgets.

It knows nothing of HTTP: each API translates its own schema into a GenerationRequest.
"""
