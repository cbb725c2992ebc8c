"""The service's own API: `POST /generate` and the tutorial's `GET /{prompt}`."""
