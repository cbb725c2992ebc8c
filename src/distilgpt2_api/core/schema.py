"""JSON Schemas for structured output: what the grammar enforces, and the check of every finished answer.

One function, `prepare_schema`, turns a client's schema (response_format, TGI's grammar, a tool's parameters)
into what llguidance compiles and what a finished answer is checked against:

- The token mask enforces what llguidance implements: types, enum/const, properties/required, items and
  prefixItems, min/max items, lengths and properties, string patterns, numeric bounds and multipleOf, anyOf,
  allOf, $ref, and the formats in `ENFORCED_FORMATS`. `oneOf` is written as `anyOf`; other formats are
  annotations (as JSON Schema 2020-12 has them by default).
- Keywords a token mask cannot hold (uniqueItems, not, if/then/else, dependencies, dependentRequired,
  contains, ...) are left to the check: every answer the grammar completes is validated against the client's
  own schema by `jsonschema` (and must not repeat a key); one that fails ends with finish_reason
  `schema_violation`, never `stop`.
- So that answers finish, the grammar writes a subset of what the schema allows (every such answer is valid):
  compact JSON; an object that declares properties and says nothing of others gets only those (as llama-server
  does); a number or integer without bounds of its own has at most 15 integral digits, a number at most
  `FRACTION_DIGITS` decimals.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

ENFORCED_FORMATS = frozenset(
    {"date-time", "date", "time", "duration", "email", "hostname", "ipv4", "ipv6", "uuid", "uri"}
)
NUMBER_LIMIT = 10**15  # |x| below this: 15 integral digits at most, as llama.cpp's JSON grammar writes them
FRACTION_DIGITS = 9
# How llguidance writes JSON (answers and tool-call arguments): Python's default separators, no other whitespace.
JSON_LAYOUT: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
GRAMMAR_OPTIONS: dict[str, Any] = {
    **JSON_LAYOUT,
    "coerce_one_of": True,  # oneOf as anyOf; the check then asks for exactly one
    "lenient": True,  # keywords the mask cannot hold are left to the check
}

_KNOWN_DRAFT = re.compile(r"https?://json-schema\.org/(draft-0[3-7]|draft/20(19-09|20-12))/schema#?")
# Keywords whose value is a schema, a list of schemas, or a map of names to schemas (the walk follows them).
_ONE = ("additionalProperties", "items", "additionalItems", "contains", "not", "if", "then", "else", "propertyNames")
_ONE += ("unevaluatedItems", "unevaluatedProperties")
_MANY = ("anyOf", "oneOf", "allOf", "prefixItems")
_MAP = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_INSTANCES = ("const", "default", "enum", "examples")  # keywords whose value is JSON data, never a schema
# Besides `properties`, what lets or may let an object hold other keys: such an object is left as it is.
_OPEN = ("additionalProperties", "patternProperties", "unevaluatedProperties", "allOf", "anyOf", "oneOf", "$ref")
_OPEN += ("if", "dependentSchemas", "dependencies")


class SchemaViolation(ValueError):
    """A finished answer is not valid against its schema (the message says where)."""


@dataclass(frozen=True)
class PreparedSchema:
    """A client's schema ready for llguidance (`grammar_schema`), and the check every finished answer passes."""

    grammar_schema: Any
    check: Callable[[str], str | None]  # a finished answer's text -> why it is not valid, or None


def schema_check(schema: Mapping[str, Any] | bool) -> Callable[[str], str | None]:
    """The check of a finished answer against `schema` (built once per schema while it is in use)."""
    return _checker(json.dumps(schema, sort_keys=True))


def prepare_schema(schema: Mapping[str, Any] | bool, *, narrow: bool = True, checked: bool = True) -> PreparedSchema:
    """What llguidance compiles for `schema` and how a finished answer is checked against `schema` itself.

    `narrow=False` keeps the grammar to the schema as written (no closed objects or bounded numbers): the
    fallback for a schema whose narrowed form llguidance cannot compile. `checked=False` is for answers that
    are not checked when finished (tool-call arguments): what the mask cannot hold is then refused by
    llguidance, and oneOf is approximated only where its branches cannot overlap."""
    grammar_schema = _narrowed(schema, in_all_of=False) if narrow else _annotated_formats(schema)
    options = GRAMMAR_OPTIONS if checked else JSON_LAYOUT
    if isinstance(grammar_schema, dict):
        grammar_schema = {**grammar_schema, "x-guidance": options}
    else:  # true / false: a schema of its own
        grammar_schema = {"allOf": [grammar_schema], "x-guidance": options}
    return PreparedSchema(grammar_schema, schema_check(schema))


def check_problem(schema: Mapping[str, Any] | bool) -> str | None:
    """Why `schema` cannot be held at all, or None: a string pattern that neither the mask (llguidance) nor the
    check (Python) can read. (llguidance refuses a malformed schema itself, naming what is wrong.)"""
    for path, sub in _subschemas(schema, ()):
        pattern = sub.get("pattern") if isinstance(sub, dict) else None
        if isinstance(pattern, str) and not _mask_can_hold(pattern) and _python_pattern(pattern) is None:
            return f"the pattern {pattern!r} cannot be read (at {_path((*path, 'pattern'))})"
    return None


def strict_problem(schema: Mapping[str, Any]) -> str | None:
    """What OpenAI's strict mode would refuse in `schema`, or None: the root is an object, and every object
    lists all its properties as required and sets additionalProperties to false."""
    if schema.get("type") != "object":
        return "strict: the root schema must be an object ('type': 'object')"
    for path, sub in _subschemas(schema, ()):
        if not isinstance(sub, dict) or not ("properties" in sub or sub.get("type") == "object"):
            continue
        where = _path(path)
        if sub.get("additionalProperties") is not False:
            return f"strict: the object at {where} must set 'additionalProperties': false"
        missing = [name for name in sub.get("properties", {}) if name not in sub.get("required", [])]
        if missing:
            return f"strict: the object at {where} must list every property as required (missing: {missing})"
    return None


# ---- the check ----


@lru_cache(maxsize=256)
def _checker(schema_text: str) -> Callable[[str], str | None]:
    """The check for one schema (as canonical JSON text), built once while it is in use."""
    import jsonschema
    import referencing

    schema = json.loads(schema_text)

    def no_retrieval(uri: str) -> referencing.Resource[Any]:
        raise referencing.exceptions.NoSuchResource(ref=uri)  # never the network

    cls = _validator_class(schema)
    formats = jsonschema.FormatChecker(formats=())  # the draft's checks of the formats the grammar enforces
    formats.checkers = {name: check for name, check in cls.FORMAT_CHECKER.checkers.items() if name in ENFORCED_FORMATS}
    validator = cls(schema, registry=referencing.Registry(retrieve=no_retrieval), format_checker=formats)

    def check(text: str) -> str | None:
        try:
            value = json.loads(text, object_pairs_hook=_unique_keys)
        except (ValueError, RecursionError) as error:
            return f"not JSON: {error}"
        try:
            error = jsonschema.exceptions.best_match(validator.iter_errors(value))
        except referencing.exceptions.Unresolvable as unresolvable:
            return f"the schema's reference cannot be resolved: {unresolvable}"
        except Exception as failure:  # noqa: BLE001 - a schema jsonschema cannot apply: the answer is not known valid
            return f"the answer could not be checked: {failure!r}"
        return None if error is None else f"{error.message} (at {_path(error.absolute_path)})"

    return check


def _validator_class(schema: Any) -> Any:
    """The validator of the schema's `$schema` draft; without one (or an unknown one), 2020-12's, or draft 7's for
    a schema that uses its keywords (`definitions`, `dependencies`, `items` as a list, `additionalItems`), as older
    ones do. Its `pattern` reads JavaScript's named groups, and skips a pattern Python cannot read."""
    import jsonschema

    cls = jsonschema.Draft202012Validator
    if isinstance(schema, dict) and _KNOWN_DRAFT.fullmatch(str(schema.get("$schema"))):
        cls = jsonschema.validators.validator_for(schema, default=cls)
    else:
        legacy = ("definitions", "dependencies", "additionalItems")
        for _, sub in _subschemas(schema, ()):
            if isinstance(sub, dict) and (any(key in sub for key in legacy) or isinstance(sub.get("items"), list)):
                cls = jsonschema.Draft7Validator
                break
    return _with_lenient_pattern(cls)


@lru_cache(maxsize=8)
def _with_lenient_pattern(cls: Any) -> Any:
    import jsonschema

    strict = cls.VALIDATORS["pattern"]

    def pattern(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
        if isinstance(value, str) and _python_pattern(value) is None:
            return  # Python cannot read it; the mask held it (check_problem refuses one neither can read)
        yield from strict(validator, _named_groups(value) if isinstance(value, str) else value, instance, schema)

    return jsonschema.validators.extend(cls, {"pattern": pattern})


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        repeated = next(key for key in keys if keys.count(key) > 1)
        raise ValueError(f"the key {repeated!r} is repeated")
    return dict(pairs)


def _path(path: Any) -> str:
    return "/" + "/".join(str(part) for part in path)


# ---- the grammar's schema ----


def _narrowed(schema: Any, *, in_all_of: bool) -> Any:
    """`schema` with unenforced formats dropped, closed objects and bounded numbers (see the module)."""
    if not isinstance(schema, dict):
        return schema
    out = _annotated_formats(_walked(schema, lambda sub, key: _narrowed(sub, in_all_of=key == "allOf")))
    if "properties" in out and not in_all_of and not any(key in out for key in _OPEN):
        out["additionalProperties"] = False
    kinds = out.get("type")
    kinds = {kinds} if isinstance(kinds, str) else set(kinds) if isinstance(kinds, list) else set()
    numeric = kinds and kinds <= {"number", "integer"} and "enum" not in out and "const" not in out
    if numeric:
        low, high = out.get("minimum", out.get("exclusiveMinimum")), out.get("maximum", out.get("exclusiveMaximum"))
        if low is None and (high is None or _number(high) > -NUMBER_LIMIT):
            out["minimum"] = -(NUMBER_LIMIT - 1)
        if high is None and (low is None or _number(low) < NUMBER_LIMIT):
            out["maximum"] = NUMBER_LIMIT - 1
        if "number" in kinds and "multipleOf" not in out:
            out["multipleOf"] = 10.0**-FRACTION_DIGITS
    return out


def _named_groups(pattern: str) -> str:
    """JavaScript's named groups, `(?<name>...)`, as Python writes them."""
    return re.sub(r"\(\?<(?![=!])", "(?P<", pattern)


@lru_cache(maxsize=4096)
def _python_pattern(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(_named_groups(pattern))
    except re.error:
        return None


@lru_cache(maxsize=4096)
def _mask_can_hold(pattern: str) -> bool:
    """Whether llguidance can compile the string pattern `pattern` (each one tried once)."""
    import llguidance

    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema({"type": "string", "pattern": pattern})
    except ValueError:
        return False
    return llguidance.LLMatcher.validate_grammar(grammar) == ""


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _annotated_formats(schema: Any) -> Any:
    """`schema` without what the grammar cannot enforce and leaves to the check: formats it does not know, and
    string patterns its regular expressions cannot read (look-arounds, word boundaries, back-references...)."""
    if not isinstance(schema, dict):
        return schema
    out = _walked(schema, lambda sub, _key: _annotated_formats(sub))
    for key, value in schema.items():  # a $ref may point into any object, e.g. #/definitions/name/full
        if isinstance(value, dict) and key not in (*_ONE, *_MAP, "dependencies", *_INSTANCES):
            out[key] = _annotated_formats(value)
    if isinstance(out.get("format"), str) and out["format"] not in ENFORCED_FORMATS:
        del out["format"]
    if isinstance(out.get("pattern"), str) and not _mask_can_hold(out["pattern"]):
        del out["pattern"]
    for bound in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        if out.get("type") != "integer" and abs(_number(out.get(bound))) >= NUMBER_LIMIT:
            del out[bound]  # a number range to a double's largest: llguidance cannot write it; the check keeps it
    if out.get("$schema") is not None and not _KNOWN_DRAFT.fullmatch(str(out["$schema"])):
        del out["$schema"]  # not a draft's own URI: llguidance would look it up
    return out


def _walked(schema: dict[str, Any], visit: Callable[[Any, str], Any]) -> dict[str, Any]:
    """A copy of `schema` with `visit(subschema, keyword)` applied to each of its direct subschemas."""
    out = dict(schema)
    for key, value in schema.items():
        if key in _ONE and isinstance(value, dict):
            out[key] = visit(value, key)
        elif key in _ONE and key == "items" and isinstance(value, list) or key in _MANY and isinstance(value, list):
            out[key] = [visit(item, key) for item in value]
        elif key in _MAP and isinstance(value, dict):
            out[key] = {name: visit(item, key) for name, item in value.items()}
        elif key == "dependencies" and isinstance(value, dict):
            out[key] = {name: visit(item, key) if isinstance(item, dict) else item for name, item in value.items()}
    return out


def _subschemas(schema: Any, path: tuple[Any, ...]) -> list[tuple[tuple[Any, ...], Any]]:
    """Every subschema of `schema` with its path (the schema itself first)."""
    found: list[tuple[tuple[Any, ...], Any]] = [(path, schema)]
    if not isinstance(schema, dict):
        return found
    for key, value in schema.items():
        if key in _ONE and isinstance(value, dict):
            found += _subschemas(value, (*path, key))
        elif key in (*_MANY, "items") and isinstance(value, list):
            for i, item in enumerate(value):
                found += _subschemas(item, (*path, key, i))
        elif key in _MAP and isinstance(value, dict):
            for name, item in value.items():
                found += _subschemas(item, (*path, key, name))
    return found
