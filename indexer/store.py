"""What the indexer needs of a registry (the facade above it, ``loraregistry.api.Registry``, is
one): sessions and the embedding model. A Protocol, so that indexer/ never imports the facade."""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol

from sqlalchemy.orm import Session

from indexer.embed import Embedder


class Store(Protocol):
    def session(self, write: bool = False) -> AbstractContextManager[Session]: ...

    def embedder(self) -> Embedder: ...
