"""The OpenAI completion request and response: validation with errors that name the field,
and the ``text_completion`` body (``stop`` sequences applied)."""

from __future__ import annotations

import json
import time
import uuid

from starlette.responses import JSONResponse

from cluster_app.serving.router import Arm
from cluster_app.serving.spec import ServeSpec

__all__ = ["BadRequest", "error_response"]


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400, code=None):
        super().__init__(message)
        self.param, self.status, self.code = param, status, code


def _parse(raw: bytes, spec: ServeSpec) -> dict:
    """The validated request; :class:`BadRequest` naming the first thing wrong."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"the request body is not valid JSON: {e}") from e
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = prompt
    else:
        raise BadRequest("'prompt' must be a string or a non-empty list of strings", "prompt")
    if len(prompts) > spec.max_batch:
        raise BadRequest(f"at most {spec.max_batch} prompts per request", "prompt")
    longest = max(len(p) for p in prompts)
    if longest > spec.max_prompt_chars:
        raise BadRequest(
            f"the prompt has {longest} characters; the limit is {spec.max_prompt_chars}",
            "prompt",
            code="context_length_exceeded",
        )
    max_tokens = body.get("max_tokens", spec.default_max_tokens)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise BadRequest("'max_tokens' must be an integer", "max_tokens")
    if not 1 <= max_tokens <= spec.max_tokens:
        raise BadRequest(
            f"'max_tokens' must be in [1, {spec.max_tokens}], not {max_tokens}", "max_tokens"
        )
    temperature = body.get("temperature", 0.0)
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not 0 <= temperature <= 2
    ):
        raise BadRequest("'temperature' must be a number in [0, 2]", "temperature")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not (
        isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) and s for s in stop)
    ):
        raise BadRequest("'stop' must be a string or a list of at most 4 non-empty strings", "stop")
    n = body.get("n", 1)
    if n != 1:
        raise BadRequest("only n=1 is supported", "n")
    user, model = body.get("user"), body.get("model")
    if user is not None and not isinstance(user, str):
        raise BadRequest("'user' must be a string", "user")
    if model is not None and not isinstance(model, str):
        raise BadRequest("'model' must be a string", "model")
    return {
        "prompts": prompts,
        "max_tokens": max_tokens,
        "temperature": float(temperature),
        "stop": stop or [],
        "user": user,
        "model": model,
    }


def _response(body: dict, texts: list[str], arm: Arm, spec: ServeSpec) -> dict:
    choices = []
    for i, text in enumerate(texts):
        text, reason = text[: body["max_tokens"]], "length"
        cuts = [text.find(s) for s in body["stop"] if s in text]
        if cuts:
            text, reason = text[: min(cuts)], "stop"
        choices.append({"text": text, "index": i, "logprobs": None, "finish_reason": reason})
    prompt_chars = sum(len(p) for p in body["prompts"])
    completion_chars = sum(len(c["text"]) for c in choices)
    return {
        "id": f"cmpl-{uuid.uuid4().hex[:24]}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": f"{arm.ref}@{arm.commit[:12]}",
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_chars,
            "completion_tokens": completion_chars,
            "total_tokens": prompt_chars + completion_chars,
        },
    }


def error_response(status: int, message: str, kind: str, param=None, code=None, headers=None):
    """An error in the OpenAI shape: ``{"error": {message, type, param, code}}``."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)
