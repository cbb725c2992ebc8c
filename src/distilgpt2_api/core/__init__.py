"""The generation core: a request validated once (validation), scheduled through one contract (scheduler) onto a
step engine (loop) or a whole-job engine (batch), and its tokens turned into text (sequence, stream).

It knows nothing of HTTP: each API translates its own schema into a GenerationRequest.
"""
