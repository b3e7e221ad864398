"""Output schemas in a shape clients check faster, with the same meaning.

An MCP client checks every structured result against the tool's output
schema (the official SDK with `jsonschema`, in Python, on each call). For the
ledger's larger results that check cost the client about as much as the
whole round trip of a tool that returns a constant. Two rewrites of what
pydantic publishes accept and refuse exactly the same documents, and spare
the validator most of its steps:

- a reference to `$defs` is replaced by the definition itself (when the
  definition does not refer back to itself): no reference to resolve on
  every value;
- a choice of types, such as an optional value `anyOf: [S, {"type":
  "null"}]`, becomes one schema with `type: [T, "null"]` when each option
  is one type T whose keywords apply to values of that type only (a
  string's `format`, an object's `properties`, ...): one type check instead
  of a failed option, and an error object, for every null.

Anything else is left as it is.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

ANNOTATIONS = frozenset({"title", "description", "default", "examples"})
_KEYWORDS = {
    "string": frozenset({"format", "minLength", "maxLength", "pattern"}),
    "number": frozenset(
        {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}
    ),
    "array": frozenset({"items", "prefixItems", "minItems", "maxItems", "uniqueItems"}),
    "object": frozenset(
        {
            "properties",
            "required",
            "additionalProperties",
            "patternProperties",
            "minProperties",
            "maxProperties",
        }
    ),
}
"""Keywords that say nothing of a value of another kind than theirs."""
_FAMILY = {"integer": "number"}
"""Types whose values are also values of another (an integer is a number)."""
_DEFS_PREFIX = "#/$defs/"


def quick_to_check(schema: Schema) -> Schema:
    """`schema` (a JSON Schema as pydantic writes it) rewritten as the module
    says: a new dict, accepting exactly the documents `schema` accepts."""
    definitions: dict[str, Schema] = schema.get("$defs", {})
    kept = {name for name in definitions if _refers_to(definitions, name, name)}
    inlined = _inline(schema, definitions, kept)
    if kept:
        inlined["$defs"] = {
            name: _inline(definitions[name], definitions, kept) for name in kept
        }
    result: Schema = _merged_types(inlined)
    return result


def _refers_to(definitions: dict[str, Schema], start: str, target: str) -> bool:
    """Whether the definition `start` reaches `target` through references."""
    seen: set[str] = set()
    stack = [start]
    while stack:
        for name in _references(definitions.get(stack.pop(), {})):
            if name == target:
                return True
            if name not in seen:
                seen.add(name)
                stack.append(name)
    return False


def _references(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = []
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(_DEFS_PREFIX):
            found.append(ref[len(_DEFS_PREFIX) :])
        for value in node.values():
            found += _references(value)
        return found
    if isinstance(node, list):
        return [name for item in node for name in _references(item)]
    return []


def _inline(node: Any, definitions: dict[str, Schema], kept: set[str]) -> Any:
    if isinstance(node, list):
        return [_inline(item, definitions, kept) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    name = ref[len(_DEFS_PREFIX) :] if isinstance(ref, str) else None
    if (
        ref is not None
        and isinstance(ref, str)
        and ref.startswith(_DEFS_PREFIX)
        and name in definitions
        and name not in kept
    ):
        target = _inline(definitions[name], definitions, kept)
        siblings = {k: _inline(v, definitions, kept) for k, v in node.items()}
        del siblings["$ref"]
        if set(siblings) <= ANNOTATIONS:
            return {**target, **siblings}
        return {"allOf": [target], **siblings}
    return {
        key: _inline(value, definitions, kept)
        for key, value in node.items()
        if key != "$defs"
    }


def _merged_types(node: Any) -> Any:
    if isinstance(node, list):
        return [_merged_types(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _merged_types(value) for key, value in node.items()}
    options = node.get("anyOf")
    outer = {key: value for key, value in node.items() if key != "anyOf"}
    if not isinstance(options, list) or not set(outer) <= ANNOTATIONS:
        return node
    merged = _one_of_types(options)
    if merged is None:
        return node
    return {**merged, **outer}


def _one_of_types(options: list[Any]) -> Schema | None:
    """One schema for `anyOf: options` when each option is one type with
    keywords of that type only, and no two options say anything of the same
    values (an integer is a number too: then neither may have keywords);
    None when they cannot be told apart so simply."""
    types: list[str] = []
    keywords: Schema = {}
    annotations: list[Schema] = []
    kinds: dict[str, bool] = {}  # kind -> whether an option of it has keywords
    for option in options:
        kind = option.get("type") if isinstance(option, dict) else None
        if not isinstance(kind, str) or kind in types:
            return None
        own = {k: v for k, v in option.items() if k != "type" and k not in ANNOTATIONS}
        family = _FAMILY.get(kind, kind)
        if not set(own) <= _KEYWORDS.get(family, frozenset()):
            return None
        if family in kinds and (own or kinds[family]):
            return None
        if set(own) & set(keywords):
            return None
        kinds[family] = bool(own)
        types.append(kind)
        keywords.update(own)
        notes = {k: v for k, v in option.items() if k in ANNOTATIONS}
        if notes:
            annotations.append(notes)
    if len(annotations) > 1:
        return None
    return {**keywords, **(annotations[0] if annotations else {}), "type": types}
