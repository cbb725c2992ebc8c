"""Lambda events for tests, derived from `sam local generate-event` output in tests/events/."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

EVENTS = Path(__file__).parent / "events"


def _template(name: str) -> dict[str, Any]:
    return copy.deepcopy(json.loads((EVENTS / name).read_text()))


def _body(body: object | None, base64_body: bool) -> tuple[str | None, bool]:
    if body is None:
        return None, False
    raw = body if isinstance(body, str) else json.dumps(body)
    return (base64.b64encode(raw.encode()).decode(), True) if base64_body else (raw, False)


def http_api_event(
    method: str,
    path: str,
    *,
    query: str = "",
    body: object | None = None,
    base64_body: bool = False,
    function_url: bool = False,
) -> dict[str, Any]:
    """An HTTP API (payload 2.0) event; `path` as the gateway passes it (decoded), or encoded for a Function URL."""
    event = _template("apigw-http-v2.json")
    event.update(rawPath=path, rawQueryString=query, cookies=[], pathParameters={})
    event["headers"] = {"content-type": "application/json", "host": "id.execute-api.us-east-1.amazonaws.com"}
    event["queryStringParameters"] = {k: ",".join(v) for k, v in parse_qs(query).items()} or None
    event["requestContext"]["http"].update(method=method, path=path)
    event["routeKey"] = event["requestContext"]["routeKey"] = "$default"
    if function_url:
        event["requestContext"]["domainName"] = "abcdefg.lambda-url.us-east-1.on.aws"
        event["requestContext"].pop("authorizer", None)
    event["body"], event["isBase64Encoded"] = _body(body, base64_body)
    return event


def rest_api_event(
    method: str,
    path: str,
    *,
    stage: str = "prod",
    query: dict[str, str] | None = None,
    body: object | None = None,
    base64_body: bool = False,
) -> dict[str, Any]:
    """A REST API (payload 1.0) event; `path` percent-encoded, as REST APIs pass it."""
    event = _template("apigw-rest-v1.json")
    event.update(path=path, httpMethod=method, pathParameters={"proxy": path.lstrip("/")})
    event["headers"] = {"Content-Type": "application/json", "Host": "1234567890.execute-api.us-east-1.amazonaws.com"}
    event["multiValueHeaders"] = {k: [v] for k, v in event["headers"].items()}
    event["queryStringParameters"] = query
    event["multiValueQueryStringParameters"] = {k: [v] for k, v in (query or {}).items()} or None
    event["requestContext"].update(stage=stage, path=f"/{stage}{path}", httpMethod=method)
    event["body"], event["isBase64Encoded"] = _body(body, base64_body)
    return event


def scheduled_event() -> dict[str, Any]:
    """An EventBridge scheduled event, as `sam local generate-event cloudwatch scheduled-event` prints it."""
    return {
        "id": "cdc73f9d-aea9-11e3-9d5a-835b769c0d9c",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": "1970-01-01T00:00:00Z",
        "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/ExampleRule"],
        "detail": {},
    }


def response_body(response: dict[str, Any]) -> bytes:
    """A Lambda proxy response's body, as bytes."""
    body = response["body"]
    return base64.b64decode(body) if response.get("isBase64Encoded") else body.encode()


def response_json(response: dict[str, Any]) -> Any:
    return json.loads(response_body(response))


def response_header(response: dict[str, Any], name: str) -> str:
    """A Lambda proxy response's header `name` (lowercase), single- or multi-valued."""
    headers = {k.lower(): v for k, v in (response.get("headers") or {}).items()}
    multi = {k.lower(): v for k, v in (response.get("multiValueHeaders") or {}).items()}
    return str(headers.get(name) or multi[name][0])
