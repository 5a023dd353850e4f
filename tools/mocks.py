"""Recording Pulumi mocks that behave like the real providers where the program depends on it.

- every registration is recorded in order with its parent, inputs by wire (camelCase) name;
- a Kubernetes object without ``metadata.name`` gets an auto-name (logical name + stable
  suffix), which flows into the outputs other resources reference and into the manifest;
- ``random`` passwords return a deterministic value marked secret;
- custom resources keep their ``spec``;
- the ``protect`` and ``retain_on_delete`` options each registration carries are kept.

Preview mode (``install(stack, preview=True)``) answers like the engine on the first
``pulumi preview`` of a stack: the SDK runs with ``dry_run``, so an ``Output`` that is not known
is sent as the engine's unknown marker and ``apply`` callbacks on it never run; the mocks
return every input as the planned output, except what a provider computes when it creates the
resource, which stays unknown: generated ``metadata.name``s and ``random`` results. Whatever is
derived from those (a checksum of a generated password, a reference to a generated name) is
unknown too, exactly as far as the program lets it spread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pulumi
from google.protobuf import struct_pb2
from pulumi import output as pulumi_output
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import resource as runtime_resource
from pulumi.runtime import rpc
from pulumi.runtime.proto import resource_pb2, source_pb2

# How the mocked engine marks a secret value on the wire.
SECRET_SIG = rpc._special_sig_key  # "4dabf18193072939515e22adb298388d"
SECRET_MARK = rpc._special_secret_sig  # "1b47061264138c4ac30d75fd1eb44270"
REDACTED = "[secret]"
UNKNOWN = "[unknown]"
"""How the preview render writes a value not known until the resource is created."""


@dataclass
class Recorded:
    """One registered resource as the engine saw it."""

    type: str
    name: str
    parent: str | None
    inputs: dict[str, Any]
    outputs: dict[str, Any] = field(default_factory=dict)
    provider: str = ""
    """Provider reference (``<urn>::<id>``) when one was set explicitly or inherited."""
    protect: bool = False
    """``protect``: the engine refuses to delete (or replace) it."""
    retain_on_delete: bool = False
    """``retain_on_delete``: a delete only removes it from the state."""
    urn: str = ""
    parent_urn: str = ""
    dependencies: tuple[str, ...] = ()
    """URNs the engine orders it after (``depends_on`` and the resources its inputs came from)."""
    aliases: tuple[str, ...] = ()
    """URNs of earlier registrations this one takes over (its ``aliases`` option)."""

    @property
    def custom(self) -> bool:
        return not self.type.startswith("pgplatform:")


def auto_suffix(name: str) -> str:
    """Pulumi appends 8 random characters; a hash keeps renders reproducible."""
    return hashlib.sha256(name.encode()).hexdigest()[:8]


def _secret(value: Any) -> dict[str, Any]:
    return {SECRET_SIG: SECRET_MARK, "value": value}


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SECRET_SIG) == SECRET_MARK


class RecordingMocks(pulumi.runtime.Mocks):
    """Answers registrations like the providers would, and keeps them for inspection."""

    def __init__(self, *, preview: bool = False) -> None:
        self.preview = preview
        self.resources: list[Recorded] = []
        # What the plain mock arguments drop of the registration being answered (parent,
        # provider, options), set by RecordingMonitor. The SDK calls the monitor from a pool of
        # threads, so this is per thread.
        self._registering = threading.local()

    def registering(
        self,
        parent: str | None,
        provider: str,
        *,
        protect: bool,
        retain_on_delete: bool,
        graph: tuple[str, str, tuple[str, ...]] = ("", "", ()),
        aliases: tuple[str, ...] = (),
    ) -> None:
        """``graph``: the registration's URN, its parent's URN and its dependencies."""
        self._registering.value = (parent, provider, protect, retain_on_delete, graph, aliases)

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict]:
        parent, provider, protect, retain, (urn, parent_urn, dependencies), aliases = getattr(
            self._registering, "value", (None, "", False, False, ("", "", ()), ())
        )
        recorded = Recorded(
            type=args.typ,
            name=args.name,
            parent=parent,
            inputs=args.inputs,
            provider=provider,
            protect=protect,
            retain_on_delete=retain,
            urn=urn,
            parent_urn=parent_urn,
            dependencies=dependencies,
            aliases=aliases,
        )
        self.resources.append(recorded)
        outputs = dict(args.inputs)
        if args.typ.startswith("kubernetes:"):
            metadata = dict(outputs.get("metadata") or {})
            if not metadata.get("name"):
                generated = f"{args.name}-{auto_suffix(args.name)}"
                metadata["name"] = pulumi_output.UNKNOWN if self.preview else generated
            outputs["metadata"] = metadata
        elif args.typ == "random:index/randomPassword:RandomPassword":
            length = int(args.inputs.get("length", 32))
            seed = hashlib.sha256(args.name.encode()).hexdigest()
            outputs["result"] = _secret(rpc.UNKNOWN if self.preview else (seed * 4)[:length])
        recorded.outputs = outputs
        return f"{args.name}-id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list[tuple[str, str]] | None]:
        return {}, None

    def by_type(self, type_token: str) -> list[Recorded]:
        return [r for r in self.resources if r.type == type_token]

    def kubernetes(self) -> Iterator[Recorded]:
        return (r for r in self.resources if r.type.startswith("kubernetes:"))


class RecordingMonitor(pulumi_mocks.MockMonitor):
    """Adds the parent and the registration order, which the plain monitor drops."""

    def __init__(self, mocks: RecordingMocks) -> None:
        super().__init__(mocks)
        self.recording = mocks

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 - gRPC method name
        # The plain monitor answers synchronously through new_resource, which records it.
        parent = request.parent.split("::")[-1] if request.parent else None
        aliases = tuple(
            alias.urn
            or self.make_urn(
                request.parent if not alias.spec.noParent else "",
                alias.spec.type or request.type,
                alias.spec.name or request.name,
            )
            for alias in request.aliases
        ) + tuple(request.aliasURNs)
        self.recording.registering(
            parent,
            request.provider,
            protect=bool(request.protect),
            retain_on_delete=bool(request.retainOnDelete),
            graph=(
                self.make_urn(request.parent, request.type, request.name),
                request.parent,
                tuple(request.dependencies),
            ),
            aliases=aliases,
        )
        return self._register(request)

    def _register(self, request: Any) -> Any:
        """The plain monitor's answer, with the state put on the wire directly.

        The plain monitor serialises the state through the SDK's asynchronous serialiser, which
        handles Outputs, resources and assets; a mocked state holds none of those (plain JSON
        values, secrets already in wire form, unknowns), and that serialiser was the largest
        cost per registration of a render.
        """
        urn = self.make_urn(request.parent, request.type, request.name)
        if request.type == "pulumi:pulumi:Stack":
            return resource_pb2.RegisterResourceResponse(urn=urn)
        args = pulumi.runtime.MockResourceArgs(
            typ=request.type,
            name=request.name,
            inputs=_from_the_wire(request.object),
            provider=request.provider,
            resource_id=request.importId,
            custom=request.custom or False,
        )
        answered, state = self.recording.new_resource(args)
        id_ = answered or ""
        answer = state
        if not self.recording.preview and request.type.startswith("kubernetes:"):
            # Everything else of the object is its inputs, which the SDK fills in itself for
            # properties an update's answer leaves out; on a preview it would not, so there the
            # whole state is sent, as the provider's planned outputs.
            answer = {"metadata": state["metadata"]}
        wire = struct_pb2.Struct()
        wire.update(_on_the_wire(answer))
        self.resources[urn] = pulumi_mocks.MockMonitor.ResourceRegistration(urn, id_, state)
        return resource_pb2.RegisterResourceResponse(urn=urn, id=id_, object=wire)


def _from_the_wire(message: struct_pb2.Struct) -> dict[str, Any]:
    """A registration's inputs as the SDK's deserialiser gives them to plain mocks.

    Secrets stay in their wire form (``{sig: secret, "value": ...}``), an unknown stays the
    engine's marker string (:func:`is_unknown` knows both forms), a null leaves its key out. The
    program passes no assets, archives or resource references, the only wire forms this skips.
    """
    return _fields(message)


def _fields(message: struct_pb2.Struct) -> dict[str, Any]:
    return {
        key: value for key, item in message.fields.items() if (value := _value(item)) is not None
    }


def _value(item: struct_pb2.Value) -> Any:
    kind = item.WhichOneof("kind")
    if kind == "string_value":
        return item.string_value
    if kind == "struct_value":
        return _fields(item.struct_value)
    if kind == "list_value":
        return [_value(v) for v in item.list_value.values]
    if kind == "number_value":
        return item.number_value
    if kind == "bool_value":
        return item.bool_value
    return None


def _on_the_wire(value: Any) -> Any:
    """A mocked state as the engine sends it: unknowns as its marker, the rest as is."""
    if isinstance(value, dict):
        return {k: _on_the_wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_on_the_wire(v) for v in value]
    if isinstance(value, pulumi_output.Unknown):
        return rpc.UNKNOWN
    return value


class _InlineExecutor(concurrent.futures.ThreadPoolExecutor):
    """Runs what the SDK hands the loop's executor (its monitor calls) on the loop's thread.

    The SDK sends every registration to the engine from a worker thread, as a real gRPC call
    blocks; the mocked monitor answers at once, and two thread hops per registration cost
    more than the answer. The mocked monitor already pumps the running loop when it needs to
    (``_sync_await``), so answering inline keeps the order of events and every result the same.
    """

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as error:  # handed to the awaiting coroutine
            future.set_exception(error)
        return future


def install(stack: str, project: str = "pgplatform", *, preview: bool = False) -> RecordingMocks:
    """Point the Pulumi runtime at fresh recording mocks for ``stack`` (``preview``: dry run).

    A new event loop and root stack per call: runs must not see each other's registrations.
    """
    loop = asyncio.new_event_loop()
    loop.set_default_executor(_InlineExecutor(max_workers=1))
    asyncio.set_event_loop(loop)
    pulumi.runtime.settings.ROOT.set(None)
    # The SDK walks the Python stack of every registration to report its source position to
    # the engine's diagnostics; the mocked engine drops it, and the walk is ~15% of a render.
    runtime_resource._get_stack_trace = source_pb2.StackTrace
    mocks = RecordingMocks(preview=preview)
    pulumi.runtime.set_mocks(
        mocks,
        project=project,
        stack=stack,
        preview=preview,
        monitor=RecordingMonitor(mocks),
    )
    # The mocked engine only relays the SDK's debug lines (several per registration) to Python
    # logging; without an engine the SDK skips them, and prints warnings and errors to stderr.
    pulumi.runtime.settings.SETTINGS.engine = None
    return mocks


def settle() -> None:
    """Wait until every outstanding registration (children of components included) is done."""
    loop = asyncio.get_event_loop()
    loop.run_until_complete(pulumi.runtime.stack.wait_for_rpcs())


def is_unknown(value: Any) -> bool:
    """A value the engine does not know yet (as the SDK deserialises it on a preview)."""
    return isinstance(value, pulumi_output.Unknown) or value == rpc.UNKNOWN


def redact(value: Any) -> Any:
    """Secrets become ``[secret]``, unknowns ``[unknown]``; integral floats become ints
    (the wire has no ints)."""
    if is_secret(value):
        return REDACTED
    if is_unknown(value):
        return UNKNOWN
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
