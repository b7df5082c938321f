"""The fallback's integration fixtures: all-MiniLM-L6-v2 once per session, a fresh database, the candidate store."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from cag.embedding import MiniLMEmbedder
from cag.fallback.candidate_store import CandidateStore
from cag.fallback.core.candidates import ClusteringPolicy
from tests.infra_fixtures import FreshDatabase

# Looser than the service's default similarity: paraphrases of one question by MiniLM score about 0.7 to 0.9.
PROMOTION_POLICY = ClusteringPolicy(similarity=0.7, evidence_overlap=0.5, propose_at=3)


@pytest.fixture(scope="session")
def minilm() -> MiniLMEmbedder:
    return MiniLMEmbedder.load()


@pytest.fixture
async def database(fresh_database: FreshDatabase) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(fresh_database.database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def candidate_store(database: AsyncEngine) -> CandidateStore:
    store = CandidateStore(database, PROMOTION_POLICY)
    await store.create_tables()
    await store.create_tables()  # idempotent
    return store
