"""The Aggregated Discovery Service (state of the world) over grpc.aio.

The messages are `envoy-data-plane`'s betterproto dataclasses; the method is registered as a
generic stream-stream handler whose (de)serializers are betterproto's `parse` and `bytes`, so it
runs on the same grpcio server as health and reflection.

Per stream and resource type: a response carries the snapshot's version and a fresh nonce; a
request naming that nonce is an ACK (its version is the one sent) or, with `error_detail`, a
NACK: logged, and Envoy keeps the last version it accepted while this one is not sent again
(the next change makes a new version). A request naming an older nonce is stale and ignored. A
change of the snapshot is pushed to every stream subscribed to the type, clusters before
endpoints; after clusters are sent, the next endpoints request is answered even with an
unchanged subscription (the clusters it fills are warming on it).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from envoy_data_plane.envoy.config.core.v3 import ControlPlane
from envoy_data_plane.envoy.service.discovery.v3 import DiscoveryRequest, DiscoveryResponse
from prometheus_client import Counter, Gauge

from callisto.gateway.control_plane.resources import (
    CHANGED,
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    TYPES,
    SnapshotStore,
)

log = logging.getLogger(__name__)

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
ADS_METHOD = "StreamAggregatedResources"

XDS_STREAMS = Gauge("callisto_xds_streams", "Envoy ADS streams open on this control plane.")
XDS_RESPONSES = Counter(
    "callisto_xds_responses_total", "Discovery responses sent, by resource type.", ["type"]
)
XDS_NACKS = Counter(
    "callisto_xds_nacks_total", "Responses Envoy rejected (NACK), by resource type.", ["type"]
)


def _short(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1]


@dataclass
class _Sent:
    version: str
    nonce: str
    names: tuple[str, ...]


class AdsStream:
    """One Envoy's stream: what was sent to it, what it accepted, what it asks for."""

    def __init__(self, store: SnapshotStore, identifier: str, peer: str) -> None:
        self._store = store
        self._identifier = identifier
        self._peer = peer
        self._node = ""
        self._nonces = itertools.count(1)
        self._sent: dict[str, _Sent] = {}
        self._accepted: dict[str, str] = {}
        self._subscribed: dict[str, tuple[str, ...]] = {}
        self._endpoints_rewarm = False

    def accepted(self, type_url: str) -> str | None:
        """The last version Envoy ACKed of the type (None before its first ACK)."""
        return self._accepted.get(type_url)

    def on_request(self, request: DiscoveryRequest) -> list[DiscoveryResponse]:
        """The responses a request calls for (none for an ACK, a NACK or a stale request)."""
        if request.node is not None and request.node.id:
            self._node = request.node.id
        type_url = request.type_url
        if type_url not in TYPES:
            log.warning(
                "request for a resource type this control plane does not serve",
                extra={"fields": {"node": self._node, "type": type_url}},
            )
            return []
        names = tuple(sorted(request.resource_names))
        sent = self._sent.get(type_url)
        if request.response_nonce:
            if sent is None or request.response_nonce != sent.nonce:
                return []  # answers a response that a newer one replaced
            error = request.error_detail
            if error is not None and (error.code or error.message):
                XDS_NACKS.labels(_short(type_url)).inc()
                log.warning(
                    "envoy rejected a configuration; it keeps its last accepted one",
                    extra={
                        "fields": {
                            "node": self._node,
                            "type": _short(type_url),
                            "rejected_version": sent.version,
                            "kept_version": request.version_info,
                            "error": error.message,
                        }
                    },
                )
            else:
                self._accepted[type_url] = request.version_info
            rewarm = type_url == ENDPOINT_TYPE and self._endpoints_rewarm
            if names == sent.names and not rewarm:
                self._subscribed[type_url] = names
                return []
        self._subscribed[type_url] = names
        return [self._response(type_url)]

    def on_change(self) -> list[DiscoveryResponse]:
        """Pushes for the types whose version moved past what this stream was sent."""
        responses = []
        for type_url in TYPES:
            sent = self._sent.get(type_url)
            if type_url not in self._subscribed or sent is None:
                continue
            if self._store.snapshot[type_url].version != sent.version:
                responses.append(self._response(type_url))
        return responses

    def _response(self, type_url: str) -> DiscoveryResponse:
        resources = self._store.snapshot[type_url]
        names = self._subscribed[type_url]
        nonce = str(next(self._nonces))
        self._sent[type_url] = _Sent(resources.version, nonce, names)
        if type_url == CLUSTER_TYPE:
            self._endpoints_rewarm = True
        elif type_url == ENDPOINT_TYPE:
            self._endpoints_rewarm = False
        XDS_RESPONSES.labels(_short(type_url)).inc()
        fields = {"node": self._node, "type": _short(type_url), "version": resources.version}
        log.debug("sending", extra={"fields": fields})
        return DiscoveryResponse(
            version_info=resources.version,
            resources=resources.select(names),
            type_url=type_url,
            nonce=nonce,
            control_plane=ControlPlane(identifier=self._identifier),
        )


class AggregatedDiscoveryService:
    """Serves every ADS stream from one `SnapshotStore`."""

    def __init__(self, store: SnapshotStore, identifier: str) -> None:
        self._store = store
        self._identifier = identifier

    def handler(self) -> grpc.GenericRpcHandler[DiscoveryRequest, DiscoveryResponse]:
        return grpc.method_handlers_generic_handler(
            ADS_SERVICE,
            {
                ADS_METHOD: grpc.stream_stream_rpc_method_handler(
                    self.stream_aggregated_resources,
                    request_deserializer=DiscoveryRequest.parse,
                    response_serializer=bytes,
                )
            },
        )

    async def stream_aggregated_resources(
        self,
        requests: AsyncIterator[DiscoveryRequest],
        context: grpc.aio.ServicerContext[DiscoveryRequest, DiscoveryResponse],
    ) -> AsyncIterator[DiscoveryResponse]:
        await self._store.ready.wait()
        stream = AdsStream(self._store, self._identifier, context.peer())
        events: asyncio.Queue[object] = asyncio.Queue()
        self._store.listen(events)

        async def read() -> None:
            try:
                async for request in requests:
                    events.put_nowait(request)
            finally:
                events.put_nowait(None)

        reader = asyncio.create_task(read(), name="ads-reader")
        XDS_STREAMS.inc()
        try:
            while (event := await events.get()) is not None:
                if event is CHANGED:
                    responses = stream.on_change()
                else:
                    assert isinstance(event, DiscoveryRequest)
                    responses = stream.on_request(event)
                for response in responses:
                    yield response
        finally:
            XDS_STREAMS.dec()
            self._store.unlisten(events)
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
