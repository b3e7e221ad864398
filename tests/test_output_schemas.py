"""Output schemas published in the shape clients check faster
(adapters/mcp/schemas/output_schema.py) accept and refuse exactly what
pydantic's schemas do."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema.validators import validator_for  # type: ignore[import-untyped]
from mcp import Client
from pydantic import BaseModel, Field

from allocation_ledger.adapters.mcp.schemas.output_schema import quick_to_check
from allocation_ledger.adapters.mcp.tools.specs import TOOLS


class Amounts(BaseModel):
    cpu: float
    memory: int = Field(ge=0)


class Server(BaseModel):
    name: str = Field(min_length=1)
    status: Literal["running", "idle"]
    idle_since: datetime | None
    size: Amounts | None = None


class Tree(BaseModel):
    label: str
    children: list[Tree] = []
    size: Amounts | None = None


class Result(BaseModel):
    pool: str
    total: Amounts = Field(description="The pool's totals.")
    servers: list[Server]
    held: dict[str, Amounts]
    note: str | None = None
    count: int | None = Field(default=None, ge=0)
    kind: Literal["a", "b"] | None = None
    value: int | float | None = None
    ratio: float | None = None
    bounded: Annotated[int, Field(ge=0)] | Annotated[float, Field(le=5)] | None = 1
    mode: dict[str, str] | str = "slots"
    tree: Tree | None = None


SCHEMAS = [Result.model_json_schema(), Tree.model_json_schema()]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(-2, 2) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "cpu",
                    "memory",
                    "name",
                    "status",
                    "idle_since",
                    "size",
                    "label",
                    "children",
                    "pool",
                    "total",
                    "servers",
                    "held",
                    "note",
                    "x",
                ]
            ),
            inner,
            max_size=5,
        )
    ),
    max_leaves=12,
)
AMOUNTS = {"cpu": 1.5, "memory": 2048}
VALID = {
    "pool": "default",
    "total": AMOUNTS,
    "servers": [
        {"name": "fs", "status": "idle", "idle_since": "2026-01-01T00:00:00+00:00"},
        {"name": "gh", "status": "running", "idle_since": None, "size": AMOUNTS},
    ],
    "held": {"acme": AMOUNTS},
    "note": None,
    "count": 3,
    "kind": "a",
    "value": 2.5,
    "ratio": 0.5,
    "bounded": 7,
    "mode": {"memory": "cgroup-v2"},
    "tree": {"label": "root", "children": [{"label": "leaf", "size": None}]},
}


def valid(schema: dict[str, Any], document: object) -> bool:
    return not list(validator_for(schema)(schema).iter_errors(document))


def variants(document: Any) -> list[Any]:
    """The document with each value, one at a time, replaced by something
    else (null, a string, a number, an object, a list) or removed."""
    found: list[Any] = [document]
    replacements: list[Any] = [None, "x", -1, 1.5, {}, [], {"cpu": "no"}]
    if isinstance(document, dict):
        for key, value in document.items():
            for other in [*replacements, *variants(value)[1:]]:
                found.append({**document, key: other})
            found.append({k: v for k, v in document.items() if k != key})
    elif isinstance(document, list):
        for index, value in enumerate(document):
            for other in [*replacements, *variants(value)[1:]]:
                found.append([*document[:index], other, *document[index + 1 :]])
    return found


@pytest.mark.parametrize("schema", SCHEMAS, ids=["result", "recursive"])
def test_the_rewrite_accepts_and_refuses_what_the_original_does(
    schema: dict[str, Any],
) -> None:
    quick = quick_to_check(schema)
    assert quick != schema
    documents = variants(VALID) + variants(VALID["tree"])
    verdicts = {json.dumps(d): valid(schema, d) for d in documents}
    assert any(verdicts.values()) and not all(verdicts.values())
    for document in documents:
        assert valid(quick, document) == verdicts[json.dumps(document)], document


@settings(max_examples=300, deadline=None)
@given(document=json_values)
def test_the_rewrite_agrees_on_any_document(document: object) -> None:
    for schema in SCHEMAS:
        assert valid(quick_to_check(schema), document) == valid(schema, document)


def test_optional_values_and_references_are_rewritten() -> None:
    quick = quick_to_check(Result.model_json_schema())
    properties = quick["properties"]
    assert properties["note"]["type"] == ["string", "null"]
    assert properties["count"] == {
        "type": ["integer", "null"],
        "minimum": 0,
        "default": None,
        "title": "Count",
    }
    assert (
        properties["total"]["properties"] == Amounts.model_json_schema()["properties"]
    )
    assert properties["total"]["description"] == "The pool's totals."
    # a definition that refers to itself stays one
    assert set(quick["$defs"]) == {"Tree"}
    assert properties["tree"]["anyOf"] == [{"$ref": "#/$defs/Tree"}, {"type": "null"}]
    assert properties["servers"]["items"]["properties"]["size"]["type"] == [
        "object",
        "null",
    ]
    assert "anyOf" in properties["kind"]  # an enum says nothing of type alone
    assert "anyOf" in properties["bounded"]  # both options say of integers
    assert properties["mode"]["type"] == ["object", "string"]
    assert properties["value"]["type"] == ["integer", "number", "null"]


@pytest.mark.anyio
async def test_every_tool_publishes_its_schema_rewritten(client: Client) -> None:
    listed = (await client.list_tools()).tools
    assert {tool.name for tool in listed} >= set(TOOLS)
    for tool in listed:
        if tool.name in TOOLS:
            schema = tool.output_schema
            assert schema is not None, tool.name
            assert quick_to_check(schema) == schema, tool.name
            assert "$ref" not in json.dumps(schema), tool.name
