"""The OpenAPI 3 document served at GET /openapi.json.

Built from the same constants the validators use (options.py), so the
document cannot drift from what the server accepts.
"""

from __future__ import annotations

from typing import Any

from intgrads_zmq import __version__
from intgrads_zmq.options import BASELINES, MAX_SEED, METHODS, TENSOR_FIELDS, Limits

ERROR = {"$ref": "#/components/schemas/Error"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ERROR}}}


def _request_schema(limits: Limits) -> dict[str, Any]:
    text = {"type": "string", "minLength": 1, "maxLength": limits.max_sequence_chars, "pattern": "\\S"}
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "sequence": {**text, "description": "The text to explain."},
            "sequences": {"type": "array", "items": text, "minItems": 1, "maxItems": limits.max_sequences,
                          "description": "Several texts; they may run on different workers."},
            "target": {"oneOf": [{"type": "integer", "minimum": 0, "maximum": 1_000_000},
                                 {"type": "string", "minLength": 1, "maxLength": 200}],
                       "description": "Class index or label name; default: the predicted class."},
            "n_steps": {"type": "integer", "minimum": 1, "maximum": limits.max_steps},
            "method": {"type": "string", "enum": list(METHODS)},
            "baseline": {"type": "string", "enum": list(BASELINES)},
            "max_length": {"type": "integer", "minimum": 2, "maximum": limits.max_length},
            "seed": {"type": "integer", "minimum": 0, "maximum": MAX_SEED},
            "fields": {"type": "array", "items": {"type": "string", "enum": list(TENSOR_FIELDS)},
                       "description": "Tensors to return (default: all four; none for JSON)."},
        },
        "oneOf": [{"required": ["sequence"]}, {"required": ["sequences"]}],
    }


def _attribution_operation(limits: Limits, named: bool) -> dict[str, Any]:
    parameters = [{"name": "format", "in": "query", "required": False,
                   "schema": {"type": "string", "enum": ["torch", "gzip", "json", "safetensors"]}}]
    if named:
        parameters.append({"name": "name", "in": "path", "required": True,
                           "schema": {"type": "string", "minLength": 1, "maxLength": 200,
                                      "pattern": "^[A-Za-z0-9_.-]+$"}})
    return {
        "summary": "Integrated and intermediate gradients of a text" + (" for a named model" if named else ""),
        "parameters": parameters,
        "requestBody": {"required": True,
                        "content": {"application/json": {"schema": _request_schema(limits)}}},
        "responses": {
            "200": {
                "description": "gzip'd torch.save dict (default), JSON, or safetensors",
                "content": {
                    "application/gzip": {"schema": {"type": "string", "format": "binary"}},
                    "application/json": {"schema": {"type": "object"}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                },
            },
            "400": _error("Invalid body or option (the 'field' names it)"),
            "404": _error("Unknown model"),
            "413": _error("Body too large"),
            "500": _error("The model failed on this input"),
            "503": _error("Overloaded, no worker, or broker unavailable (see Retry-After)"),
            "504": _error("Deadline passed"),
            "507": _error("Out of memory even in the smallest chunk"),
        },
    }


def openapi_document(limits: Limits) -> dict[str, Any]:
    json_ok = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "intgrads-zmq", "version": __version__,
                 "description": "Integrated Gradients of transformer text classifiers."},
        "paths": {
            "/model/": {"post": _attribution_operation(limits, named=False)},
            "/model/{name}/": {"post": _attribution_operation(limits, named=True)},
            "/models": {"get": {"summary": "Served models", "responses": {
                "200": json_ok, "503": _error("Broker unavailable")}}},
            "/healthz": {"get": {"summary": "Process alive", "responses": {"200": json_ok}}},
            "/readyz": {"get": {"summary": "Broker reachable and every model has a worker", "responses": {
                "200": json_ok, "503": _error("Not ready")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {
                "200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        },
        "components": {"schemas": {"Error": {
            "type": "object",
            "required": ["title", "description"],
            "properties": {
                "title": {"type": "string"},
                "description": {"type": "string"},
                "code": {"type": "string"},
                "field": {"type": "string"},
                "retry_after": {"type": "number"},
            },
        }}},
    }
