"""Hostile input for the property-style barrage tests of every service (a unique module name:
tests/ has several support modules on sys.path).

`Hostile` builds protobuf requests from a fixed seed, walking each message's descriptor and
filling fields with values a careless or malicious client might send: empty and huge strings,
NUL and control characters, unicode, path tricks and filter injection in resource names, ids of
the other tenant, extreme integers, out-of-range enum numbers, NaN and infinities, deeply nested
or huge Structs, many repeated items, bogus field masks. The checks say what every answer must
look like: a client-error status (INVALID_ARGUMENT with a BadRequest field violation) or OK,
never INTERNAL or UNKNOWN, and a stream that ends with exactly one terminal message.
"""

from __future__ import annotations

import base64
import json
import math
import random
from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import descriptor, message_factory, struct_pb2
from google.protobuf.message import Message
from google.rpc import status_pb2

from callisto import errors

Metadata = tuple[tuple[str, str], ...]

# What a hostile request may be answered with; INTERNAL and UNKNOWN never.
CLIENT_ERRORS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)
CODES_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}

# Requests stay well below gRPC's 4 MiB message limit, so the service, not the transport, answers.
MAX_REQUEST_BYTES = 3 * 1024 * 1024
HUGE = 1024 * 1024

FIXED_STRINGS = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "\x01\x02\x1b[31m\x7f",
    "\r\n\t",
    "*",
    "**",
    "%",
    "..",
    "../x",
    "/",
    "\\",
    "null",
    "None",
    "-1",
    "0",
    "1e309",
    "NaN",
    "😀" * 8,
    "\u202e\u200b\ufeff",
    "\ud7ff\ue000\uffff",
    "Ω≈ç√∫",
    "' or 1=1 --",
    '" or tenant != "',
    'a" or tenant != "',
    "${jndi:ldap://x}",
    "{{7*7}}",
    "<script>",
    "tenants/globex/conversations/x",
    "acme:conversations:x",
    "*:*",
    "A" * 64,
    "a" * 129,
    "-a",
    "UPPER",
)

NAME_SUFFIXES = (
    "",
    "/",
    "*",
    "..",
    "../x",
    "../../tenants/globex",
    "a\x00b",
    'a" or tenant != "',
    "a' || true || '",
    "a/b",
    "a:b",
    "a*",
    "-a",
    "A",
    "a" * 64,
    "a" * 200,
    "😀",
    " a",
)


class Hostile:
    """A deterministic source of hostile values and requests (`random.Random(seed)`)."""

    def __init__(
        self,
        seed: int,
        collections: Sequence[str],
        names: Sequence[str] = (),
        tokens: Sequence[str] = (),
    ) -> None:
        self.rng = random.Random(seed)
        self.collections = list(collections)
        self.names = list(names)
        # Genuine page tokens (of any tenant) to tamper with.
        self.tokens = list(tokens)
        self._huge_left = 0

    # Scalars.

    def choice(self, options: Sequence[str]) -> str:
        return options[self.rng.randrange(len(options))]

    def name(self) -> str:
        """A resource name: a real one (maybe the other tenant's), or a collection plus junk."""
        roll = self.rng.random()
        if self.names and roll < 0.35:
            base = self.choice(self.names)
            return base if self.rng.random() < 0.7 else base + self.choice(NAME_SUFFIXES)
        if self.collections and roll < 0.85:
            return self.choice(self.collections) + "/" + self.choice(NAME_SUFFIXES)
        return self.string()

    def string(self) -> str:
        roll = self.rng.random()
        if roll < 0.3:
            return self.choice(FIXED_STRINGS)
        if roll < 0.45:
            return self.name_or_fixed()
        if roll < 0.55 and self._huge_left > 0:
            self._huge_left -= 1
            return self.choice(("x", "\x00", "é", "😀 ")) * self.rng.randrange(1, HUGE // 4)
        if roll < 0.8:
            return "".join(
                chr(self.rng.choice((self.rng.randrange(0, 0x80), self.rng.randrange(0, 0xD800))))
                for _ in range(self.rng.randrange(0, 40))
            )
        return self.rng.choice(("hello world", "acme", "globex", "models/toy_llm", "text/plain"))

    def name_or_fixed(self) -> str:
        if self.names or self.collections:
            return self.name()
        return self.choice(FIXED_STRINGS)

    def integer(self, bits: int, signed: bool) -> int:
        low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        picks = [0, 1, high, low, 2**31 - 1, 7, 100, 10_000]
        if signed:
            picks += [-1, -(2**31)]
        value = self.rng.choice(picks) if self.rng.random() < 0.8 else self.rng.randint(low, high)
        return max(low, min(high, value))

    def double(self) -> float:
        return self.rng.choice(
            (math.nan, math.inf, -math.inf, -0.0, 0.0, 1e308, -1e308, 5e-324, 0.5, -1.0, 3.0, 1.0)
        )

    def enum_number(self, enum: descriptor.EnumDescriptor) -> int:
        valid = [value.number for value in enum.values]
        return self.rng.choice([*valid, max(valid) + 1, 999, -1, 2**31 - 1, -(2**31)])

    def raw_bytes(self) -> bytes:
        roll = self.rng.random()
        if roll < 0.2:
            return b""
        if roll < 0.4:
            return b"%PDF-1.7\n\x00\xff\xfe garbage"
        if roll < 0.55:
            return b"\xff\xfe\xfd\x80\x81" * self.rng.randrange(1, 200)
        if roll < 0.65:
            return b"PK\x03\x04" + bytes(self.rng.randrange(256) for _ in range(64))
        if roll < 0.75:
            return b'{"a": [1, 2, {"b": null}' * self.rng.randrange(1, 50)
        if roll < 0.85:
            return b"col1,col2\n" + b'"unterminated,\x00\n' * self.rng.randrange(1, 50)
        return bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(0, 512)))

    # Well-known types.

    def value(self, depth: int) -> struct_pb2.Value:
        kind = self.rng.randrange(7 if depth < 40 else 4)
        value = struct_pb2.Value()
        if kind == 0:
            value.null_value = struct_pb2.NULL_VALUE
        elif kind == 1:
            value.number_value = self.double()
        elif kind == 2:
            value.string_value = self.string()
        elif kind == 3:
            value.bool_value = self.rng.random() < 0.5
        elif kind in (4, 5):
            value.struct_value.CopyFrom(self.struct(depth + 1))
        else:
            value.list_value.values.extend(
                self.value(depth + 1) for _ in range(self.rng.randrange(0, 4))
            )
        return value

    def struct(self, depth: int = 0) -> struct_pb2.Struct:
        out = struct_pb2.Struct()
        roll = self.rng.random()
        if depth == 0 and roll < 0.15:
            # Deeply nested: a chain of structs (protobuf parses at most 100 levels).
            inner = out
            for _ in range(self.rng.randrange(10, 30)):
                inner = inner.fields["n"].struct_value
            inner.fields["leaf"].string_value = "deep"
            return out
        if depth == 0 and roll < 0.3:
            # Huge: many keys.
            for index in range(self.rng.randrange(1000, 20_000)):
                out.fields[f"k{index}"].number_value = index
            return out
        for _ in range(self.rng.randrange(0, 4)):
            out.fields[self.string()[:64]].CopyFrom(self.value(depth))
        return out

    # Messages.

    def fill(self, message: Message, depth: int = 0, huge: int = 1) -> Message:
        """Fill `message` with hostile values, walking its descriptor."""
        if depth == 0:
            self._huge_left = huge
        full_name = message.DESCRIPTOR.full_name
        if full_name == "google.protobuf.Struct":
            message.CopyFrom(self.struct())
            return message
        if full_name == "google.protobuf.FieldMask":
            paths = ["*", "", "name", "etag", "create_time", "title", "a.b.c", "metadata.x"]
            message.paths.extend(  # type: ignore[attr-defined]
                self.rng.choice([*paths, self.string()]) for _ in range(self.rng.randrange(0, 4))
            )
            return message
        if full_name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
            message.seconds = self.rng.choice(  # type: ignore[attr-defined]
                (0, -1, 1, 2**62, -(2**62), 315_576_000_001, 10**11)
            )
            message.nanos = self.rng.choice((0, 1, -1, 999_999_999, 2**31 - 1))  # type: ignore[attr-defined]
            return message
        for field in message.DESCRIPTOR.fields:
            if self.rng.random() < 0.35:
                continue
            self._fill_field(message, field, depth)
        return message

    def _fill_field(self, message: Message, field: descriptor.FieldDescriptor, depth: int) -> None:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            self._fill_map(message, field, depth)
        elif field.is_repeated:
            self._fill_repeated(message, field, depth)
        elif field.message_type is not None:
            if depth < 6:
                self.fill(getattr(message, field.name), depth + 1)
        else:
            setattr(message, field.name, self.scalar(field))

    def mutate(self, valid: Message, huge: int = 1) -> Message:
        """A valid request with one or two fields, at any depth, replaced by hostile values."""
        self._huge_left = huge
        for _ in range(20):
            out = type(valid)()
            out.CopyFrom(valid)
            for _ in range(self.rng.randint(1, 2)):
                self._mutate_one(out, 0)
            if out.ByteSize() <= MAX_REQUEST_BYTES:
                return out
        return valid

    def _mutate_one(self, message: Message, depth: int) -> None:
        fields = message.DESCRIPTOR.fields
        if not fields:
            return
        field = fields[self.rng.randrange(len(fields))]
        is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
        dive = depth < 4 and self.rng.random() < 0.6 and field.message_type is not None
        if dive and not field.is_repeated and message.HasField(field.name):
            self._mutate_one(getattr(message, field.name), depth + 1)
            return
        items = getattr(message, field.name)
        if dive and field.is_repeated and not is_map and len(items):
            self._mutate_one(items[self.rng.randrange(len(items))], depth + 1)
            return
        message.ClearField(field.name)
        self._fill_field(message, field, depth)

    def scalar(self, field: descriptor.FieldDescriptor) -> object:
        kind = field.type
        types = descriptor.FieldDescriptor
        if kind == types.TYPE_STRING:
            if field.name in ("name", "parent") or field.name.endswith("_id"):
                return self.name_or_fixed()
            if field.name.endswith("page_token"):
                return self.page_token()
            return self.string()
        if kind == types.TYPE_BYTES:
            return self.raw_bytes()
        if kind == types.TYPE_BOOL:
            return self.rng.random() < 0.5
        if kind in (types.TYPE_DOUBLE, types.TYPE_FLOAT):
            value = self.double()
            return value if kind == types.TYPE_DOUBLE or not math.isfinite(value) else 0.5
        if kind == types.TYPE_ENUM:
            return self.enum_number(field.enum_type)
        bits = 64 if kind in (types.TYPE_INT64, types.TYPE_SINT64, types.TYPE_SFIXED64) else 32
        unsigned = kind in (types.TYPE_UINT32, types.TYPE_UINT64, types.TYPE_FIXED32)
        unsigned = unsigned or kind == types.TYPE_FIXED64
        return self.integer(
            64 if kind in (types.TYPE_UINT64, types.TYPE_FIXED64) else bits, not unsigned
        )

    def page_token(self) -> str:
        roll = self.rng.random()
        if self.tokens and roll < 0.4:
            return self.choice(forged_page_tokens(self.choice(self.tokens)))
        if roll < 0.3:
            raw = bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(0, 48)))
            return base64.urlsafe_b64encode(raw).decode().rstrip("=")
        if roll < 0.6:
            forged = {"c": self.rng.choice([{}, {"offset": -1}, {"offset": 2**70}, [], "x", None])}
            forged["q"] = self.rng.choice(["", "0" * 16, None])
            raw = json.dumps(forged).encode()
            return base64.urlsafe_b64encode(raw).decode().rstrip("=")
        return self.string()

    def _fill_repeated(
        self, message: Message, field: descriptor.FieldDescriptor, depth: int
    ) -> None:
        count = self.rng.choice((0, 1, 2, 3, 50, 2000)) if depth < 3 else self.rng.randrange(0, 3)
        target = getattr(message, field.name)
        for _ in range(count):
            if field.message_type is not None:
                item = target.add()
                if count <= 50 and depth < 6:
                    self.fill(item, depth + 1)
            else:
                target.append(self.scalar(field))

    def _fill_map(self, message: Message, field: descriptor.FieldDescriptor, depth: int) -> None:
        target = getattr(message, field.name)
        value_field = field.message_type.fields_by_name["value"]
        for _ in range(self.rng.choice((0, 1, 3, 500))):
            key = self.string()[:256]
            if value_field.message_type is not None:
                self.fill(target[key], depth + 1)
            else:
                target[key] = self.scalar(value_field)

    def request(self, message: Message, huge: int = 1) -> Message:
        """A hostile request of the message's type, kept below MAX_REQUEST_BYTES."""
        for _ in range(20):
            candidate = type(message)()
            self.fill(candidate, huge=huge)
            if candidate.ByteSize() <= MAX_REQUEST_BYTES:
                return candidate
        return type(message)()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _huge_cursor(value: object) -> object:
    """The cursor with every number made huge or negative and every string a stranger's."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return 2**70 if value >= 0 else -(2**70)
    if isinstance(value, str):
        return "zzzz" + value
    if isinstance(value, dict):
        return {key: _huge_cursor(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_huge_cursor(item) for item in value]
    return value


def forged_page_tokens(genuine: str) -> list[str]:
    """Tokens a client could make from a genuine one (`<payload>.<mac>`, base64url): a cursor
    rewritten to a huge offset under the old MAC, a flipped or missing MAC, the unsigned form,
    truncations, junk appended, one far too long. None of them may be accepted."""
    payload, _, mac = genuine.partition(".")
    try:
        body = json.loads(_unb64(payload))
    except ValueError:
        body = {"c": {"o": 0}, "q": "0" * 16}
    rewritten = _b64(json.dumps({**body, "c": _huge_cursor(body.get("c"))}).encode())
    offsets = _b64(json.dumps({"c": {"o": 2**70, "a": 2**70, "s": 2**70, "i": "x"}}).encode())
    flipped = mac[:-1] + ("A" if mac[-1:] != "A" else "B")
    return [
        f"{rewritten}.{mac}",
        f"{offsets}.{mac}",
        rewritten,
        payload,
        f"{payload}.",
        f"{payload}.{flipped}",
        f"{payload}.{_b64(bytes(32))}",
        f"{payload}.{mac}.{mac}",
        genuine[: len(genuine) // 2],
        genuine[:-1],
        genuine + "A",
        genuine + "é",
        "." + mac,
        genuine * 40,
    ]


async def check_forged_page_tokens(
    stub: object, method: str, request: Message, genuine: str, metadata: Metadata
) -> None:
    """Every forgery of `genuine`, sent in `request.page_token`, is INVALID_ARGUMENT with a
    field violation on `page_token`."""
    assert genuine, f"{method}: no genuine token to forge from"
    for forged in forged_page_tokens(genuine):
        attempt = type(request)()
        attempt.CopyFrom(request)
        attempt.page_token = forged  # type: ignore[attr-defined]
        what = f"{method}(page_token={forged[:80]!r})"
        try:
            await getattr(stub, method)(attempt, metadata=metadata, timeout=15.0)
        except grpc.aio.AioRpcError as error:
            code = check_rpc_error(error, what)
            assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{what}: {code.name}"
            decoded = errors.from_rpc_error(error)
            assert list(decoded.field_violations) == ["page_token"], f"{what}: {decoded.status}"
            continue
        raise AssertionError(f"{what}: accepted")


# Checks.


def check_status(status: status_pb2.Status, what: str) -> None:
    """A terminal `google.rpc.Status` is a client error, with field violations when invalid."""
    code = CODES_BY_NUMBER.get(status.code, grpc.StatusCode.UNKNOWN)
    assert code in CLIENT_ERRORS, f"{what}: {code.name} {status.message!r}"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        violations = errors.from_status(status).field_violations
        assert violations, f"{what}: INVALID_ARGUMENT without a field violation"


def check_rpc_error(error: grpc.RpcError, what: str) -> grpc.StatusCode:
    """A failed call's status is a client error, with field violations when invalid."""
    code = error.code()  # type: ignore[attr-defined]
    assert code in CLIENT_ERRORS, f"{what}: {code.name} {error.details()!r}"  # type: ignore[attr-defined]
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        violations = errors.from_rpc_error(error).field_violations
        assert violations, f"{what}: INVALID_ARGUMENT without a field violation in its details"
    return code


def describe(request: Message) -> str:
    text = str(request)
    return text if len(text) < 600 else text[:600] + f"... ({request.ByteSize()} bytes)"


def request_class(method: descriptor.MethodDescriptor) -> type[Message]:
    return message_factory.GetMessageClass(method.input_type)


def unary_methods(service: descriptor.ServiceDescriptor) -> list[descriptor.MethodDescriptor]:
    return [m for m in service.methods if not m.client_streaming and not m.server_streaming]


async def call_unary(
    stub: object, method: str, request: Message, metadata: Metadata, deadline_s: float = 15.0
) -> tuple[grpc.StatusCode, Message | None]:
    """Call a unary RPC with a hostile request; check the answer; return its code and reply."""
    what = f"{method}({describe(request)})"
    try:
        reply = await getattr(stub, method)(request, metadata=metadata, timeout=deadline_s)
    except grpc.aio.AioRpcError as error:
        return check_rpc_error(error, what), None
    return grpc.StatusCode.OK, reply


def stream_requests(
    method: grpc.StreamStreamMultiCallable,
    requests: Sequence[Message],
    metadata: Metadata,
    timeout: float = 20.0,
) -> tuple[list[Message], grpc.RpcError | None]:
    """Send a request stream and read every response, on a blocking channel (run it in a thread).

    The blocking client reports the server's status when the server ends the call before it has
    read every request; grpc.aio's client instead races its failed write against that status and
    may report a client-made "Internal error from Core", which says nothing about the service.
    """
    responses: list[Message] = []
    try:
        for response in method(iter(requests), metadata=metadata, timeout=timeout):
            responses.append(response)
    except grpc.RpcError as error:
        return responses, error
    return responses, None


# Undecodable request bodies: raw bytes no protobuf message parses, whatever its fields (an
# invalid wire type, tag 0, a truncated varint, a length running past the end, an end-group
# without a start).
UNDECODABLE = (
    b"\x0f",
    b"\x00",
    b"\x80",
    b"\x0a\x05ab",
    b"\x0c",
    b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
)


def check_undecodable_error(error: grpc.RpcError, what: str, authenticated: bool) -> None:
    """An undecodable body is INVALID_ARGUMENT with a field violation and no internals (an
    unauthenticated caller learns only that it is unauthenticated)."""
    code = error.code()  # type: ignore[attr-defined]
    details = error.details() or ""  # type: ignore[attr-defined]
    if not authenticated:
        assert code == grpc.StatusCode.UNAUTHENTICATED, f"{what}: {code.name} {details!r}"
        return
    assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{what}: {code.name} {details!r}"
    check_rpc_error(error, what)
    for internal in ("Error", "Exception", "Traceback", "deserializ"):
        assert internal not in details, f"{what}: the message leaks internals: {details!r}"


def _ends_with_invalid_status(
    method: descriptor.MethodDescriptor, replies: Sequence[Any], what: str
) -> bool:
    """Whether a stream's last reply is a terminal `error` status saying INVALID_ARGUMENT, with
    a field violation and no internals (how a handler that reports an undecodable request
    message itself answers)."""
    if not replies:
        return False
    reply = message_factory.GetMessageClass(method.output_type).FromString(replies[-1])
    if "error" not in reply.DESCRIPTOR.fields_by_name or not reply.HasField("error"):
        return False
    status: status_pb2.Status = reply.error
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], f"{what}: {status}"
    check_status(status, what)
    for internal in ("Error", "Exception", "Traceback", "deserializ"):
        assert internal not in status.message, f"{what}: the message leaks internals: {status}"
    return True


def send_undecodable(
    address: str,
    service: descriptor.ServiceDescriptor,
    metadata: Metadata,
    authenticated: bool = True,
    deadline_s: float = 15.0,
) -> int:
    """Sends every undecodable body to every RPC of `service` as raw bytes (no serializer),
    checks each answer and returns how many calls it made. Blocking client (run it in a
    thread), as in stream_requests.
    """
    calls = 0
    with grpc.insecure_channel(address) as channel:
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            for raw in UNDECODABLE:
                what = f"{method.name}(undecodable {raw!r})"
                calls += 1
                try:
                    if method.client_streaming:
                        call = channel.stream_stream(path)
                        replies, error = stream_requests(call, [raw], metadata, deadline_s)  # type: ignore[list-item]
                        if error is not None:
                            raise error
                        if authenticated and _ends_with_invalid_status(method, replies, what):
                            continue  # reported in the stream, after the results before it
                    elif method.server_streaming:
                        for _ in channel.unary_stream(path)(
                            raw, metadata=metadata, timeout=deadline_s
                        ):
                            pass
                    else:
                        channel.unary_unary(path)(raw, metadata=metadata, timeout=deadline_s)
                except grpc.RpcError as error:
                    check_undecodable_error(error, what, authenticated)
                    continue
                raise AssertionError(f"{what}: accepted")
    return calls
