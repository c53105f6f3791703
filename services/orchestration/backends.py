"""The services orchestration calls, through the SDK, as its own service principal acting for
the tenant of the work at hand (the tenant bound in the current context: the caller's in a
request, the run's in a background or resumed run)."""

from __future__ import annotations

from dataclasses import dataclass

from callisto.client import Client
from callisto.generation import GenerationClient
from callisto.persistence import PersistenceClient
from callisto.retrieval import RetrievalClient
from callisto.services.common.tenancy import bound_tenant
from callisto.services.orchestration.settings import OrchestrationSettings


@dataclass
class Backends:
    """SDK facades of persistence, generation and retrieval, one channel each."""

    persistence: PersistenceClient
    generation: GenerationClient
    retrieval: RetrievalClient
    clients: tuple[Client, Client, Client]

    @classmethod
    async def connect(cls, settings: OrchestrationSettings, service_key: str) -> Backends:
        async def client(target: str) -> Client:
            return await Client.connect(target, api_key=service_key, on_behalf_of=bound_tenant)

        persistence = await client(settings.persistence_target)
        generation = await client(settings.generation_target)
        retrieval = await client(settings.retrieval_target)
        return cls(
            persistence=persistence.persistence,
            generation=generation.generation,
            retrieval=retrieval.retrieval,
            clients=(persistence, generation, retrieval),
        )

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
