"""What the control plane sends: one cluster per Callisto service (CDS) and its serving
endpoints (EDS), versioned by content.

A version is a hash of the resources, so every control plane reading the same source sends the
same version for the same configuration: Envoy may move between them without a change.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from envoy_data_plane.google.protobuf import Any as AnyMessage

from callisto.gateway.clusters import (
    ClusterPolicy,
    cluster_name,
    load_assignment,
    service_cluster,
)
from callisto.gateway.control_plane.sources import Endpoints
from callisto.services.common import catalog

CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
# The order a change is sent in: a cluster before the endpoints that fill it.
TYPES = (CLUSTER_TYPE, ENDPOINT_TYPE)


@dataclass(frozen=True)
class Resources:
    """Every resource of one type, by name, at one version."""

    version: str
    by_name: Mapping[str, AnyMessage]

    @classmethod
    def of(cls, by_name: Mapping[str, AnyMessage]) -> Resources:
        digest = hashlib.sha256()
        for name in sorted(by_name):
            digest.update(name.encode())
            digest.update(bytes(by_name[name]))
        return cls(version=digest.hexdigest()[:16], by_name=dict(by_name))

    def select(self, names: tuple[str, ...]) -> list[AnyMessage]:
        """The named resources (every one for a wildcard request: no names, or `*`)."""
        if not names or names == ("*",):
            return [self.by_name[name] for name in sorted(self.by_name)]
        return [self.by_name[name] for name in names if name in self.by_name]


Snapshot = Mapping[str, Resources]


def build_snapshot(policy: ClusterPolicy, endpoints: Endpoints) -> dict[str, Resources]:
    """The clusters and endpoints of every service the contracts declare."""
    services = catalog.service_names()
    return {
        CLUSTER_TYPE: Resources.of(
            {cluster_name(s): AnyMessage.pack(service_cluster(s, policy)) for s in services}
        ),
        ENDPOINT_TYPE: Resources.of(
            {
                cluster_name(s): AnyMessage.pack(load_assignment(s, endpoints.get(s, ())))
                for s in services
            }
        ),
    }


class SnapshotStore:
    """The snapshot every ADS stream answers from; streams hear of each change."""

    def __init__(self) -> None:
        self._snapshot: dict[str, Resources] = {}
        self._listeners: set[asyncio.Queue[object]] = set()
        self.ready = asyncio.Event()

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def update(self, snapshot: dict[str, Resources]) -> bool:
        """Replaces the snapshot; tells the streams only when a version changed."""
        old = {t: r.version for t, r in self._snapshot.items()}
        new = {t: r.version for t, r in snapshot.items()}
        self._snapshot = snapshot
        self.ready.set()
        if old == new:
            return False
        for queue in self._listeners:
            queue.put_nowait(CHANGED)
        return True

    def listen(self, queue: asyncio.Queue[object]) -> None:
        self._listeners.add(queue)

    def unlisten(self, queue: asyncio.Queue[object]) -> None:
        self._listeners.discard(queue)


# Put on a stream's queue when the snapshot changed.
CHANGED = object()
