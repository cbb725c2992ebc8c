"""Hypothesis-generated Lambda events through `handler.handler`.

Whatever the Lambda runtime hands over (any JSON value, an API Gateway event with keys missing or
of the wrong type, odd encodings, bad base64, huge bodies), the handler must answer: a dict with a
statusCode, never 5xx for input, and for an error a JSON body with a message. It must never raise.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, assume, example, given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from event_factory import http_api_event, response_json, rest_api_event  # noqa: E402

Handler = Callable[[Any, Any], dict[str, Any]]

FUZZ = settings(
    max_examples=200,
    deadline=None,  # a valid event runs the (tiny) model; speed is not what is tested
    derandomize=True,  # the same events every run, so a failure reproduces
    database=None,  # nothing written into the work tree
    # The Lambda context fixture is function-scoped but immutable, so sharing it across examples is fine.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Every key the API Gateway / Function URL adapters look at, so random events get past `infer`.
EVENT_KEYS = [
    "version", "routeKey", "rawPath", "rawQueryString", "cookies", "headers", "queryStringParameters",
    "requestContext", "body", "pathParameters", "isBase64Encoded", "stageVariables", "resource", "path",
    "httpMethod", "multiValueQueryStringParameters", "multiValueHeaders",
]  # fmt: skip
CONTEXT_KEYS = ["http", "stage", "path", "httpMethod", "domainName", "identity", "requestId", "routeKey"]
HTTP_KEYS = ["method", "path", "sourceIp", "protocol", "userAgent"]

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
# Strings made of adapter key names: `"resource" in event` is also true for a str event.
key_soup = st.lists(st.sampled_from(EVENT_KEYS), min_size=1, max_size=4).map(" ".join)


def _valid_events() -> list[dict[str, Any]]:
    """Well-formed events for every route and gateway flavour, all cheap to serve (2 new tokens)."""
    generate = {"prompt": "Hello", "max_new_tokens": 2}
    completion = {"prompt": "Hello", "max_tokens": 2}
    return [
        http_api_event("GET", "/"),
        http_api_event("GET", "/Hello world", query="max_new_tokens=2"),
        http_api_event("POST", "/generate", body=generate),
        http_api_event("POST", "/v1/completions", body=completion, base64_body=True),
        http_api_event("GET", "/Hello%20world", query="max_new_tokens=2", function_url=True),
        rest_api_event("GET", "/", stage="Prod"),
        rest_api_event("GET", "/Hello%20there", query={"max_new_tokens": "2"}),
        rest_api_event("POST", "/generate", stage="Prod", body=generate, base64_body=True),
        rest_api_event("POST", "/v1/completions", body=completion),
        {**rest_api_event("GET", "/v1/models"), "version": "1.0"},  # HTTP API, payload 1.0
    ]


VALID_EVENTS = _valid_events()
valid_events = st.sampled_from(VALID_EVENTS).map(copy.deepcopy)
post_events = st.sampled_from([e for e in VALID_EVENTS if e.get("body")]).map(copy.deepcopy)
http_api_events = st.sampled_from([e for e in VALID_EVENTS if e.get("version") == "2.0"]).map(copy.deepcopy)


def is_warmup_like(event: object) -> bool:
    return isinstance(event, dict) and (event.get("warmup") is True or event.get("source") == "aws.events")


def invoke(handler: Handler, event: Any, context: Any) -> object:
    # Schemathesis, once imported, blanks Hypothesis' printing of drawn values; a string note still shows.
    note(f"event = {event!r}")
    return handler(event, context)


def assert_answered(response: object, *, client_error: bool = False) -> int:
    """A Lambda proxy answer: statusCode, no 5xx, and a JSON error with a message when it is an error."""
    assert isinstance(response, dict), f"handler returned {type(response).__name__}, not a dict"
    status = response.get("statusCode")
    assert isinstance(status, int), f"no integer statusCode in {sorted(response)}"
    assert status < 500, f"server error for a client's event: {response.get('body')!r:.300}"
    if client_error:
        assert 400 <= status < 500, f"expected a 4xx for a malformed event, got {status}"
    if status >= 400:
        error = response_json(response).get("error")
        assert isinstance(error, dict) and isinstance(error.get("message"), str) and error["message"]
    return status


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key/index path inside nested dicts and lists."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    paths = []
    for key, child in items:
        paths.append((*prefix, key))
        paths.extend(_paths(child, (*prefix, key)))
    return paths


@st.composite
def mutated_events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event with 1-3 values deleted or replaced by any JSON value (often of the wrong type)."""
    event = draw(valid_events)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(event)
        if not paths:
            break
        *parents, last = draw(st.sampled_from(paths))
        container = event
        for key in parents:
            container = container[key]
        if isinstance(container, dict) and draw(st.booleans()):
            del container[last]
        else:
            container[last] = draw(json_values)
    return event


def _invalid_base64() -> st.SearchStrategy[str]:
    """Text the base64 decoder rejects: a length one past a multiple of 4, or non-ASCII characters."""

    def one_past_a_multiple_of_four(data: bytes) -> str:
        text = base64.b64encode(data).decode().rstrip("=")
        return text + "A" * ((1 - len(text)) % 4)

    wrong_length = st.binary(max_size=30).map(one_past_a_multiple_of_four)
    non_ascii = st.text(min_size=1, max_size=30).map(lambda t: "\u00e9" + t)
    return wrong_length | non_ascii


@FUZZ
@given(event=json_values | key_soup)
# Containers that merely hold the key names the adapters test for with `in`.
@example(event="version requestContext")
@example(event=["resource", "requestContext"])
def test_any_json_value_gets_a_4xx(lambda_handler: Handler, lambda_context: Any, event: Any) -> None:
    assume(not is_warmup_like(event))
    assert_answered(invoke(lambda_handler, event, lambda_context), client_error=True)


@st.composite
def gateway_shaped_garbage(draw: st.DrawFn) -> dict[str, Any]:
    """`requestContext` plus `version` or `resource` (what the adapters test for), other keys random."""
    marker = draw(st.sampled_from(["version", "resource"]))
    required = {marker: json_values, "requestContext": st.dictionaries(st.sampled_from(CONTEXT_KEYS), json_values)}
    optional = {key: json_values for key in EVENT_KEYS if key not in required}
    return draw(st.fixed_dictionaries(required, optional=optional))


@FUZZ
@given(event=gateway_shaped_garbage())
def test_gateway_shaped_garbage_gets_a_4xx(lambda_handler: Handler, lambda_context: Any, event: Any) -> None:
    assert_answered(invoke(lambda_handler, event, lambda_context), client_error=True)


def _http_without(missing: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from([key for key in HTTP_KEYS if key != missing]), json_values)


@FUZZ
@given(event=http_api_events, http=st.sampled_from(["method", "path"]).flatmap(_http_without))
def test_http_context_with_missing_or_odd_fields_gets_a_4xx(
    lambda_handler: Handler, lambda_context: Any, event: dict[str, Any], http: dict[str, Any]
) -> None:
    # `requestContext.http` is where an HTTP API event says what it asks for; here its method or path is missing.
    event["requestContext"]["http"] = http
    assert_answered(invoke(lambda_handler, event, lambda_context), client_error=True)


@FUZZ
@given(event=mutated_events())
def test_mutated_valid_events_never_5xx(lambda_handler: Handler, lambda_context: Any, event: dict[str, Any]) -> None:
    assert_answered(invoke(lambda_handler, event, lambda_context))


@FUZZ
@given(
    event=valid_events,
    path=st.text(max_size=40),
    query=st.text(max_size=40),
    header=st.tuples(st.text(min_size=1, max_size=20), st.text(max_size=40)),
)
def test_odd_paths_queries_and_headers_never_5xx(
    lambda_handler: Handler, lambda_context: Any, event: dict[str, Any], path: str, query: str, header: tuple[str, str]
) -> None:
    """Any Unicode (lone surrogates, control characters, `%` sequences) where gateways put text."""
    event["headers"] = {**(event.get("headers") or {}), header[0]: header[1]}
    if event.get("version") == "2.0":
        event["rawPath"] = event["requestContext"]["http"]["path"] = "/" + path
        event["rawQueryString"] = query
    else:
        event["path"] = "/" + path
        event["queryStringParameters"] = {"max_new_tokens": query}
        event["multiValueQueryStringParameters"] = {"max_new_tokens": [query]}
        event["multiValueHeaders"] = {k: [v] for k, v in event["headers"].items()}
    assert_answered(invoke(lambda_handler, event, lambda_context))


@FUZZ
@given(
    event=post_events,
    body=st.one_of(
        st.text(max_size=200),
        json_values.map(json.dumps),
        st.fixed_dictionaries({"prompt": json_values}, optional={"max_new_tokens": json_values}).map(json.dumps),
    ),
    as_base64=st.booleans(),
)
def test_random_bodies_never_5xx(
    lambda_handler: Handler, lambda_context: Any, event: dict[str, Any], body: str, as_base64: bool
) -> None:
    event["body"] = base64.b64encode(body.encode("utf-8", "surrogatepass")).decode() if as_base64 else body
    event["isBase64Encoded"] = as_base64
    assert_answered(invoke(lambda_handler, event, lambda_context))


@FUZZ
@given(event=post_events, body=st.binary(max_size=200))
def test_base64_binary_bodies_never_5xx(
    lambda_handler: Handler, lambda_context: Any, event: dict[str, Any], body: bytes
) -> None:
    # Valid base64 of arbitrary bytes: not UTF-8, not JSON.
    event["body"], event["isBase64Encoded"] = base64.b64encode(body).decode(), True
    assert_answered(invoke(lambda_handler, event, lambda_context))


@FUZZ
@given(event=post_events, body=_invalid_base64())
def test_invalid_base64_body_gets_a_4xx(
    lambda_handler: Handler, lambda_context: Any, event: dict[str, Any], body: str
) -> None:
    event["body"], event["isBase64Encoded"] = body, True
    assert_answered(invoke(lambda_handler, event, lambda_context), client_error=True)


@FUZZ
@given(event=post_events, body=json_values, flag=json_values)
def test_body_and_base64_flag_of_any_type_never_5xx(
    lambda_handler: Handler, lambda_context: Any, event: dict[str, Any], body: Any, flag: Any
) -> None:
    event["body"], event["isBase64Encoded"] = body, flag
    assert_answered(invoke(lambda_handler, event, lambda_context))


@pytest.mark.parametrize("megabytes", [1, 5])
@pytest.mark.parametrize("as_base64", [False, True])
@pytest.mark.parametrize("index", [i for i, e in enumerate(VALID_EVENTS) if e.get("body")])
def test_huge_bodies_get_a_4xx(
    lambda_handler: Handler, lambda_context: Any, index: int, megabytes: int, as_base64: bool
) -> None:
    # Lambda accepts up to 6 MB synchronous payloads; such a body must be refused, not generated from.
    event = copy.deepcopy(VALID_EVENTS[index])
    body = json.dumps({"prompt": "a" * (megabytes * 1_000_000), "max_new_tokens": 2})
    event["body"] = base64.b64encode(body.encode()).decode() if as_base64 else body
    event["isBase64Encoded"] = as_base64
    assert_answered(lambda_handler(event, lambda_context), client_error=True)
