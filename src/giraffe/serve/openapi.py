"""/openapi.json as this server keeps it: the status codes each route answers, and its own facts.

FastAPI writes the document from the request models (schema.py) and declares 200 and
422; this module removes the 422 (validation errors are OpenAI's 400), lists the codes
each route really answers in OpenAI's error shape, and fills in what only the running
server knows where schema.py marked it (`x-...` keys): the served model's name, the
vocabulary's last token id (also as `logit_bias` keys), `--max-tokens-limit`,
`--max-queue`, and whether the model has fill-in-the-middle tokens. So a client, or a
fuzzer such as schemathesis, learns from the document what the server will refuse. It
does not know routes or generation.
"""

from __future__ import annotations

import re

from fastapi import FastAPI

from giraffe.serve.documents import ask_token_limit, template_tokens
from giraffe.serve.errors import ERROR_SCHEMA, error_responses
from giraffe.serve.state import Server

# Status codes beyond 400/413/500 (any route) and 401 (any guarded route, with --api-key)
NOT_FOUND = ("/v1/models/{model_id}", "/v1/chat/completions", "/v1/completions",
             "/v1/embeddings", "/inside/{view}", "/documents")  # fmt: skip
QUEUED = ("/v1/chat/completions", "/v1/completions", "/documents/ask")  # 503 and 504


def install_document(app: FastAPI, server: Server) -> None:
    """/openapi.json lists the status codes each route really answers, not FastAPI's 422,
    and this server's facts (`_server_facts`)."""
    build = app.openapi
    keyed, facts = server.settings.api_key is not None, _server_facts(server)

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        components["Error"] = ERROR_SCHEMA
        for path, operations in schema["paths"].items():
            codes = {400, 413, 500}
            codes |= {401} if keyed and path != "/health" else set()
            codes |= {404} if path.startswith(NOT_FOUND) else set()
            codes |= {503, 504} if path in QUEUED else set()
            for op in operations.values():
                op["responses"].pop("422", None)
                op["responses"].update(error_responses(codes))
        _fill_facts(schema, facts)  # components, and path parameters (/inside/{view})
        return schema

    app.openapi = openapi


def _server_facts(server: Server) -> dict:
    """What this server's document states that a static schema cannot: see schema.py."""
    vocab = min(server.lm.tokenizer.vocab_size, server.lm.config.vocab_size)
    return {
        "x-token-id": {"maximum": vocab - 1},  # the server refuses larger ids
        "x-token-key": {"pattern": decimal_range(vocab - 1)},  # the same ids as JSON keys
        "x-max-tokens": {"maximum": server.settings.max_tokens_limit},
        "x-model": {"chat": [server.model_id], "embedding": [server.embed_id]},
        "x-fim": server.lm.fim_style is not None,
        "x-queue": server.settings.max_queue,  # prompts x n of one request, at most
        "x-view": sorted(server.views),  # /inside/{view}: another is a 404
        "x-embed-dim": server.embedder.dim if server.embedder is not None else None,
        "x-upload-name": upload_name(server.knowledge),
        "x-ask-tokens": ask_token_limit(server, template_tokens(server)),
    }


def _fill_facts(node, facts: dict) -> None:
    """Fill in the server's facts where schema.py marked them (x-... keys, removed)."""
    if isinstance(node, list):
        for value in node:
            _fill_facts(value, facts)
        return
    if not isinstance(node, dict):
        return
    if node.pop("x-token-id", False):
        node.update(facts["x-token-id"])
    if node.pop("x-token-key", False):
        node.update(facts["x-token-key"])
    if node.pop("x-max-tokens", False):
        node.update(facts["x-max-tokens"])
    kind = node.pop("x-model", None)
    if kind is not None and None not in facts["x-model"][kind]:
        node["enum"] = facts["x-model"][kind]  # another name is a 404 model_not_found
    if node.pop("x-queue", False):
        node["maximum"] = min(int(node["maximum"]), facts["x-queue"])
    if node.pop("x-prompts", False):
        node["allOf"] = node.get("allOf", []) + prompts_per_n(facts["x-queue"], node)
    if node.pop("x-fim", False) and not facts["x-fim"]:
        node.clear()  # this model has no FIM tokens: suffix may only be null
        node.update(type="null", description="this model has no fill-in-the-middle tokens")
    if node.pop("x-default-within-limit", False):  # as the route: OpenAI's 16, capped
        node["default"] = min(node["default"], facts["x-max-tokens"]["maximum"])
    if node.pop("x-view", False) and facts["x-view"]:
        node["enum"] = facts["x-view"]
    if node.pop("x-embed-dim", False) and facts["x-embed-dim"] is not None:
        node["enum"] = [facts["x-embed-dim"]]  # one width: the encoder's
    if node.pop("x-upload-name", False) and facts["x-upload-name"] is not None:
        node.update(facts["x-upload-name"])
    if node.pop("x-ask-tokens", False):
        node["maximum"] = facts["x-ask-tokens"]
    for value in node.values():
        _fill_facts(value, facts)


def upload_name(knowledge) -> dict | None:
    """The names an upload may have (rag.ingest.upload_key): a plain file name of a kind
    the knowledge base reads - no slash or backslash, no control characters, a stem before
    the suffix (".md" alone has none), in any letter case."""
    if knowledge is None:
        return None
    ignore_case = ("".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c)
                           for c in suffix[1:]) for suffix in sorted(knowledge.suffixes))  # fmt: skip
    plain = "[^/\\\\\\u0000-\\u001f\\u007f]"
    pattern = f"^{plain}+\\.({'|'.join(ignore_case)})$"
    return {"pattern": pattern, "maxLength": knowledge.max_name}


def prompts_per_n(queue: int, request: dict) -> list[dict]:
    """if/then rules: with n >= k, a list of prompts holds at most queue // k of them (a list
    of token ids is one prompt)."""
    top = min(int(request["properties"]["n"]["maximum"]), queue)
    rules, last = [], None
    for k in range(1, top + 1):
        most = queue // k
        if most == last:
            continue
        last = most
        prompts = {"anyOf": [
            {"type": "string"}, {"type": "array", "items": {"type": "integer"}},
            {"type": "array", "maxItems": most},
        ]}  # fmt: skip
        rule = {"properties": {"prompt": prompts}}  # n = 1 (the default) needs no if
        if k > 1:
            rule = {"if": {"required": ["n"], "properties": {"n": {"minimum": k}}}, "then": rule}
        rules.append(rule)
    return rules


def decimal_range(top: int) -> str:
    """A regular expression for the decimal numbers 0..top, no leading zeros."""
    digits = str(top)
    alternatives = ["0"] + [f"[1-9][0-9]{{{n}}}" for n in range(len(digits) - 1)]
    for i, d in enumerate(digits):  # same prefix as top, a smaller digit here, any digits after
        low, high, rest = (1 if i == 0 else 0), int(d) - 1, len(digits) - i - 1
        if high >= low:
            alternatives.append(
                f"{digits[:i]}[{low}-{high}]" + (f"[0-9]{{{rest}}}" if rest else "")
            )
    alternatives.append(digits)
    return "^(" + "|".join(dict.fromkeys(alternatives)) + ")$"
