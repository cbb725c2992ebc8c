"""text-generation-inference's wire format: `POST /`, and its body and answers on `/generate` and `/generate_stream`."""
