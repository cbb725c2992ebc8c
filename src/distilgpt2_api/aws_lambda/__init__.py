"""AWS Lambda glue: the handler behind `handler.handler`, and the event adapters it gives Mangum."""
