"""Command line: `python -m distilgpt2_api serve`, `invoke` and `prepare-model`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from distilgpt2_api.engines import ModelLoadError
from distilgpt2_api.model_store import ModelStoreError, is_prepared
from distilgpt2_api.model_store.settings import MODEL_SOURCES, PrepareSettings
from distilgpt2_api.settings import get_settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    try:
        from distilgpt2_api.api import app  # loads the model
    except (ModelLoadError, ModelStoreError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # No access log: it would print `GET /{prompt}` paths; the app logs each request itself.
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    return 0


def _prepare_model(args: argparse.Namespace) -> int:
    from distilgpt2_api.model_store.prepare import prepare_model  # torch + transformers: prepare time only

    if args.if_missing and is_prepared(args.output):
        print(f"model already prepared in {args.output}")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        manifest = prepare_model(args.source, args.output, model_id=args.model_id, strict=args.strict)
    except ModelStoreError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"prepared {manifest.model_id} (source {manifest.source}, {manifest.parameter_count:,} parameters, "
        f"{manifest.size_bytes / 1e6:.0f} MB) in {args.output}"
    )
    return 0


def _invoke(args: argparse.Namespace) -> int:
    from distilgpt2_api.aws_lambda.local import invoke

    try:
        return invoke(args.event)
    except (ModelLoadError, ModelStoreError, OSError, ValueError) as error:  # a missing file, bad JSON, no model
        print(f"error: {error}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    settings, prepare_settings = get_settings(), PrepareSettings()
    parser = argparse.ArgumentParser(prog="python -m distilgpt2_api")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the API with uvicorn (model from MODEL_DIR)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(run=_serve)

    invoke = commands.add_parser(
        "invoke", help="send an API Gateway event (a JSON file) through the Lambda handler; print the result"
    )
    invoke.add_argument("event", type=Path)
    invoke.set_defaults(run=_invoke)

    prepare = commands.add_parser("prepare-model", help="write a ready model directory (see docs/MODEL_STORE.md)")
    prepare.add_argument("--source", default=prepare_settings.model_source, choices=MODEL_SOURCES)
    prepare.add_argument(
        "--model-id",
        default=None,
        help="Hub id (hub/auto; default MODEL_ID), s3:// URI (s3; default MODEL_S3_URI) or directory (local)",
    )
    prepare.add_argument("--output", type=Path, default=settings.model_dir)
    prepare.add_argument("--strict", action="store_true", help="never fall back to the offline model")
    prepare.add_argument("--if-missing", action="store_true", help="do nothing when --output is already prepared")
    prepare.set_defaults(run=_prepare_model)

    args = parser.parse_args(argv)
    if args.command == "prepare-model" and args.model_id is None:
        args.model_id = settings.model_s3_uri if args.source == "s3" else prepare_settings.model_id
    return int(args.run(args))


if __name__ == "__main__":
    raise SystemExit(main())
