"""toy_llm: a deterministic, decoupled stand-in for `llm` with the same I/O contract.

Token i is word (seed + i) mod n of the last user message, followed by a space, so a test can
predict the exact stream. Extra request fields: `delay_ms` (sleep before each token),
`fail_after` (raise an `internal:` error after that many tokens), and `fail_when` with
`fail_times` (the first `fail_times` requests of a `tag` whose last user message contains
`fail_when` fail as `unavailable:` after their first token, so a test can make one workflow
step fail transiently and then succeed). When the environment variable
CALLISTO_TOY_LLM_EVENTS names a file, one JSON line per finished request is appended to it
(`tag`, `produced`, `sent`, `finish_reason`, `cancel_seen_at`) so tests can measure how many
tokens were produced after a cancellation.

With `json_schema` in the request it follows the schema instead: the output is one minimal
instance of it (see `_instance`), streamed a JSON token (`{`, `"key":`, `1,` ...) at a time, so
structured-output and tool-call tests are fast and predictable.
"""

import json
import os
import re
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class RequestError(Exception):
    """A request the model refuses; the message carries the `invalid_argument:` prefix."""


def _stop_split(text, stops):
    """(emit_upto, stopped): where the text may be emitted up to, and whether a stop matched.

    Text that could be the start of a stop sequence is held back until it is decided.
    """
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    if found:
        return min(found), True
    hold = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                hold = max(hold, k)
                break
    return len(text) - hold, False


def _instance(schema, user_words, user_text):
    """A deterministic, minimal instance of a JSON Schema (the subset the `llm` grammar takes).

    `const` and the first `enum` value; objects with their required properties only; arrays of
    `minItems` items; strings are the last user message, cut to `maxLength` and padded with `x`
    to `minLength`; numbers 0; booleans false. Of `oneOf`/`anyOf` it takes the first alternative
    with a `const` property whose value is a word of the last user message, else the first one:
    "use calculator" in a prompt makes a tool-call envelope pick the `calculator` tool.
    """
    if not isinstance(schema, dict) or not schema:
        return {}
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    alternatives = schema.get("oneOf") or schema.get("anyOf")
    if alternatives:
        chosen = alternatives[0]
        for alternative in alternatives:
            consts = [
                sub.get("const")
                for sub in (alternative.get("properties") or {}).values()
                if isinstance(sub, dict)
            ]
            if any(isinstance(c, str) and c in user_words for c in consts):
                chosen = alternative
                break
        return _instance(chosen, user_words, user_text)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = kind[0] if kind else "object"
    if kind == "object":
        required = set(schema.get("required") or [])
        return {
            name: _instance(sub, user_words, user_text)
            for name, sub in (schema.get("properties") or {}).items()
            if name in required
        }
    if kind == "array":
        item = schema.get("items", {})
        return [_instance(item, user_words, user_text) for _ in range(schema.get("minItems", 0))]
    if kind == "string":
        text = user_text[: schema.get("maxLength", len(user_text))]
        return text + "x" * max(0, schema.get("minLength", 0) - len(text))
    if kind in ("integer", "number"):
        return 0
    if kind == "boolean":
        return False
    return None


def _json_pieces(value):
    """The JSON text of `value` cut into token-like pieces that join back to it exactly."""
    return re.findall(r"\S+\s*", json.dumps(value, ensure_ascii=False))


def _parse(raw, context_length):
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestError(f"invalid_argument: request is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise RequestError("invalid_argument: request must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("invalid_argument: messages must be a non-empty list")
    for message in messages:
        if (
            not isinstance(message, dict)
            or message.get("role") not in ("system", "user", "assistant")
            or not isinstance(message.get("content"), str)
        ):
            raise RequestError(
                "invalid_argument: each message needs role system|user|assistant and content"
            )
    max_tokens = body.get("max_tokens", 16)
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise RequestError(f"invalid_argument: max_tokens must be >= 1, got {max_tokens!r}")
    stop = body.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise RequestError("invalid_argument: stop must be a list of non-empty strings")
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise RequestError("invalid_argument: seed must be an integer or null")
    prompt_tokens = sum(len(m["content"].split()) for m in messages)
    if prompt_tokens >= context_length:
        raise RequestError(
            f"invalid_argument: prompt is {prompt_tokens} tokens; "
            f"the context window is {context_length}"
        )
    user = [m["content"] for m in messages if m["role"] == "user"]
    user_text = user[-1] if user else messages[-1]["content"]
    words = user_text.split() or ["tok"]
    schema = body.get("json_schema")
    if schema is not None and not isinstance(schema, dict):
        raise RequestError("invalid_argument: json_schema must be a JSON object")
    pieces = None
    if schema is not None:
        pieces = _json_pieces(_instance(schema, set(words), user_text.strip()))
    return {
        "words": words,
        "pieces": pieces,
        "prompt_tokens": prompt_tokens,
        "max_tokens": max_tokens,
        "stop": stop,
        "seed": seed or 0,
        "delay_s": max(0.0, float(body.get("delay_ms", 0))) / 1000.0,
        "fail_after": body.get("fail_after"),
        "tag": str(body.get("tag", "")),
        "fail_when": str(body.get("fail_when", "")),
        "fail_times": body["fail_times"] if isinstance(body.get("fail_times"), int) else 0,
        "user_text": user_text,
    }


def _response(text, prompt_tokens, completion_tokens, finish_reason):
    return pb_utils.InferenceResponse(
        output_tensors=[
            pb_utils.Tensor("text_output", np.array([text.encode("utf-8")], dtype=np.object_)),
            pb_utils.Tensor("prompt_tokens", np.array([prompt_tokens], dtype=np.int32)),
            pb_utils.Tensor("completion_tokens", np.array([completion_tokens], dtype=np.int32)),
            pb_utils.Tensor(
                "finish_reason", np.array([finish_reason.encode("utf-8")], dtype=np.object_)
            ),
        ]
    )


def _error(message):
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))


def _send_final(sender, response):
    """Close the stream; a cancelled stream may refuse data, but must still get the final flag."""
    try:
        sender.send(response, flags=FINAL)
    except Exception:
        try:
            sender.send(flags=FINAL)
        except Exception:
            pass  # the client is gone and Triton has already released the request


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = config.get("parameters", {})
        self.context_length = int(params.get("context_length", {}).get("string_value", "2048"))
        self.events_path = os.environ.get("CALLISTO_TOY_LLM_EVENTS", "")
        self.events_lock = threading.Lock()
        self.threads = set()
        self.threads_lock = threading.Lock()
        # Requests failed so far per (tag, fail_when).
        self.failures = {}

    def execute(self, requests):
        # Decoupled: each request streams from its own thread, so slow (delay_ms) requests
        # run concurrently and execute() returns at once.
        for request in requests:
            thread = threading.Thread(target=self._serve, args=(request,), daemon=True)
            with self.threads_lock:
                self.threads.add(thread)
            thread.start()
        return None

    def _fails_now(self, spec):
        """Whether this request is one of the first `fail_times` matching `fail_when`."""
        if not spec["fail_when"] or spec["fail_when"] not in spec["user_text"]:
            return False
        key = (spec["tag"], spec["fail_when"])
        with self.threads_lock:
            failed = self.failures.get(key, 0)
            if failed >= spec["fail_times"]:
                return False
            self.failures[key] = failed + 1
        return True

    def _serve(self, request):
        sender = request.get_response_sender()
        try:
            self._generate(request, sender)
        except Exception as exc:  # the stream must always end, whatever went wrong
            _send_final(sender, _error(f"internal: {type(exc).__name__}: {exc}"))
        finally:
            with self.threads_lock:
                self.threads.discard(threading.current_thread())

    def _generate(self, request, sender):
        raw = pb_utils.get_input_tensor_by_name(request, "request").as_numpy().reshape(-1)[0]
        try:
            spec = _parse(raw, self.context_length)
        except RequestError as exc:
            sender.send(_error(str(exc)), flags=FINAL)
            return
        # After one token, so the client cannot simply start the request again.
        transient = self._fails_now(spec)
        words, stops = spec["words"], spec["stop"]
        prompt_tokens = spec["prompt_tokens"]
        text, sent_upto, produced, sent = "", 0, 0, 0
        finish, cancel_seen_at, stopped_by_sequence = "length", None, False
        pieces = spec["pieces"]
        while produced < spec["max_tokens"]:
            if pieces is not None and produced >= len(pieces):
                finish = "stop"  # the instance is complete: the model's end of answer
                break
            if spec["delay_s"]:
                time.sleep(spec["delay_s"])
            if request.is_cancelled():
                finish, cancel_seen_at = "cancelled", produced
                break
            if transient and produced >= 1:
                self._record(spec["tag"], produced, sent, "error", None)
                sender.send(_error("unavailable: toy_llm went away (fail_when)"), flags=FINAL)
                return
            if spec["fail_after"] is not None and produced >= spec["fail_after"]:
                self._record(spec["tag"], produced, sent, "error", None)
                message = f"internal: toy_llm failed after {produced} tokens"
                sender.send(_error(message), flags=FINAL)
                return
            if pieces is not None:
                text += pieces[produced]
            else:
                text += words[(spec["seed"] + produced) % len(words)] + " "
            produced += 1
            upto, stopped = _stop_split(text, stops)
            if upto > sent_upto:
                sender.send(_response(text[sent_upto:upto], prompt_tokens, produced, ""))
                sent += 1
                sent_upto = upto
            if stopped:
                finish, stopped_by_sequence = "stop", True
                break
        # Held-back text that never became a stop sequence belongs to the answer, however the
        # generation ended; it rides on the final response, which a cancelled stream still takes.
        tail = "" if stopped_by_sequence else text[sent_upto:]
        self._record(spec["tag"], produced, sent + bool(tail), finish, cancel_seen_at)
        _send_final(sender, _response(tail, prompt_tokens, produced, finish))

    def _record(self, tag, produced, sent, finish_reason, cancel_seen_at):
        if not self.events_path:
            return
        line = json.dumps(
            {
                "tag": tag,
                "produced": produced,
                "sent": sent,
                "finish_reason": finish_reason,
                "cancel_seen_at": cancel_seen_at,
            }
        )
        with self.events_lock, open(self.events_path, "a", encoding="utf-8") as events:
            events.write(line + "\n")

    def finalize(self):
        with self.threads_lock:
            threads = list(self.threads)
        for thread in threads:
            thread.join(timeout=5)
