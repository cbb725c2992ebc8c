"""Command line: `python -m distilgpt2_api serve`."""

from __future__ import annotations

import argparse
import sys

from distilgpt2_api.model_loading import ModelLoadError


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    try:
        from distilgpt2_api.app import app  # loads the model
    except ModelLoadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distilgpt2_api")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the API with uvicorn (model from MODEL_DIR)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(run=_serve)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    raise SystemExit(main())
