"""A fixed corpus of real-world JSON schemas (API payloads, configs, tool arguments) with the prompts
that ask for them. Strings and arrays carry the length bounds such schemas usually have, which also
keeps greedy outputs of a 135M model short."""

from __future__ import annotations

from typing import Any

_NAME = {"type": "string", "minLength": 1, "maxLength": 24}
_TEXT = {"type": "string", "maxLength": 40}

CORPUS: list[tuple[str, dict[str, Any]]] = [
    (
        "a person",
        {
            "type": "object",
            "properties": {"name": _NAME, "age": {"type": "integer", "minimum": 0, "maximum": 150}},
            "required": ["name", "age"],
        },
    ),
    (
        "a postal address",
        {
            "type": "object",
            "properties": {
                "street": _TEXT,
                "city": _NAME,
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                "country": {"type": "string", "enum": ["US", "FR", "DE", "JP"]},
            },
            "required": ["street", "city", "zip", "country"],
        },
    ),
    (
        "a product",
        {
            "type": "object",
            "properties": {
                "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
                "price": {"type": "number", "exclusiveMinimum": 0},
                "in_stock": {"type": "boolean"},
            },
            "required": ["sku", "price", "in_stock"],
        },
    ),
    (
        "an order with line items",
        {
            "type": "object",
            "properties": {
                "order_id": {"type": "integer"},
                "items": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 2,
                    "items": {
                        "type": "object",
                        "properties": {
                            "sku": _NAME,
                            "quantity": {"type": "integer", "minimum": 1, "maximum": 9},
                        },
                        "required": ["sku", "quantity"],
                    },
                },
            },
            "required": ["order_id", "items"],
        },
    ),
    (
        "a calendar event",
        {
            "type": "object",
            "properties": {
                "title": _NAME,
                "start": {"type": "string", "format": "date"},
                "all_day": {"type": "boolean"},
            },
            "required": ["title", "start", "all_day"],
        },
    ),
    (
        "the weather in Paris",
        {
            "type": "object",
            "properties": {
                "city": _NAME,
                "temperature_c": {"type": "number", "minimum": -90, "maximum": 60},
                "conditions": {"type": "string", "enum": ["sunny", "cloudy", "rain", "snow"]},
            },
            "required": ["city", "temperature_c", "conditions"],
        },
    ),
    (
        "a user profile",
        {
            "type": "object",
            "properties": {
                "username": {"type": "string", "pattern": "^[a-z][a-z0-9_]{2,11}$"},
                "role": {"type": "string", "enum": ["admin", "editor", "viewer"]},
                "email": {"anyOf": [{"type": "string", "maxLength": 30}, {"type": "null"}]},
            },
            "required": ["username", "role", "email"],
        },
    ),
    (
        "a todo list",
        {
            "type": "array",
            "minItems": 1,
            "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {"task": _NAME, "done": {"type": "boolean"}},
                "required": ["task", "done"],
            },
        },
    ),
    (
        "a book",
        {
            "type": "object",
            "properties": {
                "title": _TEXT,
                "author": _NAME,
                "year": {"type": "integer", "minimum": 1450, "maximum": 2030},
            },
            "required": ["title", "author", "year"],
        },
    ),
    (
        "a movie review",
        {
            "type": "object",
            "properties": {
                "movie": _NAME,
                "rating": {"type": "integer", "minimum": 1, "maximum": 5},
                "summary": _TEXT,
            },
            "required": ["movie", "rating", "summary"],
        },
    ),
    (
        "a GeoJSON point",
        {
            "type": "object",
            "properties": {
                "type": {"const": "Point"},
                "coordinates": {
                    "type": "array",
                    "prefixItems": [{"type": "number"}, {"type": "number"}],
                    "minItems": 2,
                    "maxItems": 2,
                },
            },
            "required": ["type", "coordinates"],
        },
    ),
    (
        "an HTTP access log entry",
        {
            "type": "object",
            "properties": {
                "method": {"type": "string", "enum": ["GET", "POST", "PUT", "DELETE"]},
                "path": {"type": "string", "pattern": "^/[a-z/]{0,20}$"},
                "status": {"type": "integer", "minimum": 100, "maximum": 599},
            },
            "required": ["method", "path", "status"],
        },
    ),
    (
        "a package manifest",
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z-]{1,20}$"},
                "version": {"type": "string", "pattern": "^[0-9]+\\.[0-9]+\\.[0-9]+$"},
                "private": {"type": "boolean"},
            },
            "required": ["name", "version"],
            "additionalProperties": False,
        },
    ),
    (
        "a recipe",
        {
            "type": "object",
            "properties": {
                "dish": _NAME,
                "ingredients": {"type": "array", "items": _NAME, "minItems": 1, "maxItems": 3},
                "minutes": {"type": "integer", "minimum": 1, "maximum": 600},
            },
            "required": ["dish", "ingredients", "minutes"],
        },
    ),
    (
        "an invoice",
        {
            "$defs": {
                "money": {
                    "type": "object",
                    "properties": {"amount": {"type": "number"}, "currency": {"enum": ["USD", "EUR"]}},
                    "required": ["amount", "currency"],
                }
            },
            "type": "object",
            "properties": {
                "number": {"type": "string", "pattern": "^INV-[0-9]{3}$"},
                "total": {"$ref": "#/$defs/money"},
            },
            "required": ["number", "total"],
        },
    ),
    (
        "the arguments of get_weather",
        {
            "type": "object",
            "properties": {"location": _NAME, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["location", "unit"],
        },
    ),
    (
        "a support ticket",
        {
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "priority": {"enum": ["low", "medium", "high"]},
                "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 2},
            },
            "required": ["id", "priority", "tags"],
        },
    ),
    (
        "a sensor reading",
        {
            "type": "object",
            "properties": {
                "sensor": {"type": "string", "pattern": "^s[0-9]{2}$"},
                "value": {"type": "number"},
                "ok": {"type": "boolean"},
            },
            "required": ["sensor", "value", "ok"],
        },
    ),
    (
        "a color",
        {
            "type": "object",
            "properties": {"name": _NAME, "hex": {"type": "string", "pattern": "^#[0-9a-f]{6}$"}},
            "required": ["name", "hex"],
        },
    ),
    (
        "a feature flag",
        {
            "type": "object",
            "properties": {
                "key": {"type": "string", "pattern": "^[a-z_]{1,16}$"},
                "enabled": {"type": "boolean"},
                "rollout": {"type": "integer", "minimum": 0, "maximum": 100},
            },
            "required": ["key", "enabled", "rollout"],
        },
    ),
]
