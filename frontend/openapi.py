"""The OpenAPI 3 document served at GET /openapi.json.

Built from the same constants the validators use (options.py), so the
document cannot drift from what the server accepts.
"""

from __future__ import annotations

from typing import Any

from intgrads_zmq import __version__
from intgrads_zmq.options import (
    AGGREGATES,
    ALL_TARGETS,
    BASELINES,
    MAX_SEED,
    METHODS,
    METRICS,
    TENSOR_FIELDS,
    TOLERANCE_RANGE,
    Limits,
)

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
                       "description": f"Class index or label name; default: the predicted class. "
                                      f"'{ALL_TARGETS}': every class in one pass over the path (at most "
                                      f"{limits.max_target_classes} classes): integrated_gradients "
                                      "(C, 1, T, H), intermediate_gradients (C, n, T, H), and the "
                                      "per-class values (target, target_label, f_input, f_baseline, "
                                      "attributions, completeness_error, ...) become lists in class order."},
            "contrast": {"oneOf": [{"type": "integer", "minimum": 0, "maximum": 1_000_000},
                                   {"type": "string", "minLength": 1, "maxLength": 200}],
                         "description": "Class index or label name: explain logit[target] - logit[contrast] "
                                        "(not with target 'all'; not the target itself)."},
            "aggregate": {"type": "string", "enum": list(AGGREGATES),
                          "description": "'words': add words, word_attributions (summed sub-word pieces) "
                                         "and word_spans (character offsets; null for special tokens)."},
            "metrics": {"type": "array", "uniqueItems": True, "items": {"type": "string", "enum": list(METRICS)},
                        "description": "Faithfulness metrics, computed with forward passes only "
                                       "(reply: metrics; cost: timings.metrics_seconds). With target "
                                       "'all': one result per class."},
            "n_steps": {"oneOf": [{"type": "integer", "minimum": 1, "maximum": limits.max_steps},
                                  {"type": "string", "enum": ["auto"]}],
                        "description": "Path steps, or 'auto': adaptive, to 'tolerance', "
                                       "within the server's step budget."},
            "tolerance": {"type": "number", "minimum": TOLERANCE_RANGE[0], "maximum": TOLERANCE_RANGE[1],
                          "description": "Relative per-token error target for n_steps 'auto'."},
            "method": {"type": "string", "enum": list(METHODS)},
            "baseline": {"type": "string", "enum": list(BASELINES),
                         "description": "'mask': every token replaced by the model's mask token "
                                        "(400 for a model without one)."},
            "max_length": {"type": "integer", "minimum": 2, "maximum": limits.max_length},
            "seed": {"type": "integer", "minimum": 0, "maximum": MAX_SEED},
            "fields": {"type": "array", "items": {"type": "string", "enum": list(TENSOR_FIELDS)},
                       "description": "Tensors to return (default: all four; none for JSON)."},
        },
        "oneOf": [{"required": ["sequence"]}, {"required": ["sequences"]}],
    }


JOB_ID = {"name": "job_id", "in": "path", "required": True,
          "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}}
JOB_STATE = {"type": "object", "properties": {
    "job_id": {"type": "string"},
    "state": {"type": "string", "enum": ["queued", "running", "done", "failed", "cancelled"]},
    "model": {"type": "string"},
    "position": {"type": "integer", "nullable": True, "description": "requests ahead of it while queued"},
    "progress": {"type": "object", "description": "done / total path steps, eta_seconds"},
    "timings": {"type": "object"},
    "created_at": {"type": "number"}, "started_at": {"type": "number", "nullable": True},
    "finished_at": {"type": "number", "nullable": True}, "expires_at": {"type": "number", "nullable": True},
    "result_bytes": {"type": "integer"},
    "error": {"allOf": [ERROR], "nullable": True},
    "status_url": {"type": "string"}, "result_url": {"type": "string"},
}}
GONE = "The job finished but its result was evicted (older than --job-ttl, or past --job-store-bytes)"
UNKNOWN_JOB = ("Unknown job id; jobs live in the broker's memory, so a job made before the broker last "
               "restarted is unknown too")
SSE = ("With Accept: text/event-stream: Server-Sent Events 'queued' {position}, 'progress' "
       "{done, total, elapsed, eta_seconds} (0 or more), then 'result' (the JSON reply) or 'error' "
       "(the JSON error body plus 'status'). A client that disconnects cancels the request.")


def _jobs_paths(limits: Limits) -> dict[str, Any]:
    state = {"description": "The job's state", "content": {"application/json": {"schema": JOB_STATE}}}
    return {
        "/jobs/": {"post": {
            "summary": "Start a job: same body as POST /model/ (one 'sequence'; batches are refused)",
            "parameters": [{"name": "model", "in": "query", "required": False, "schema": {"type": "string"}},
                           {"name": "format", "in": "query", "required": False,
                            "description": "json: keep a summary only; otherwise all tensors are kept",
                            "schema": {"type": "string"}}],
            "requestBody": {"required": True,
                            "content": {"application/json": {"schema": _request_schema(limits)}}},
            "responses": {"202": {**state, "description": "Accepted; Location names the job"},
                          "400": _error("Invalid body, option, or a batch"), "404": _error("Unknown model"),
                          "503": _error("Overloaded or no worker (see Retry-After)")}}},
        "/jobs/{job_id}": {
            "get": {"summary": "A job's state, progress and timings", "parameters": [JOB_ID],
                    "responses": {"200": state, "404": _error(UNKNOWN_JOB), "410": _error(GONE)}},
            "delete": {"summary": "Cancel a job (its worker stops at its next chunk); a no-op once finished",
                       "parameters": [JOB_ID],
                       "responses": {"200": state, "404": _error(UNKNOWN_JOB), "410": _error(GONE)}}},
        "/jobs/{job_id}/result": {"get": {
            "summary": "A finished job's reply, in any output format (?format= or Accept, as /model/)",
            "parameters": [JOB_ID, {"name": "format", "in": "query", "required": False,
                                    "schema": {"type": "string", "enum": ["torch", "gzip", "json", "safetensors"]}}],
            "responses": {"200": {"description": "As POST /model/"},
                          "404": _error(UNKNOWN_JOB),
                          "409": _error("The job has not finished (see Retry-After)"),
                          "410": _error(GONE),
                          "499": _error("The job was cancelled"),
                          "500": _error("The job failed (its error)"),
                          "504": _error("The job passed its deadline")}}},
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
        "description": SSE,
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
                    "text/event-stream": {"schema": {"type": "string"}},
                },
            },
            "400": _error("Invalid body or option (the 'field' names it)"),
            "404": _error("Unknown model"),
            "413": _error("Body too large, or the reply would pass INTGRADS_MAX_REPLY (as JSON: INTGRADS_MAX_JSON_TENSORS)"),
            "499": _error("Cancelled: the client disconnected (it never sees this; logged and counted)"),
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
            **_jobs_paths(limits),
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
