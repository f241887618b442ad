"""samp-client: call a samp server from Python.

`Client` / `AsyncClient` give `encode` (sentence-transformers compatible), `embed`, `classify`,
`tag` and `models`, over gRPC with retries on RESOURCE_EXHAUSTED/UNAVAILABLE, deadlines, and
round-robin over every address of a `dns:///` target.
"""
from ._client import RETRIED, AsyncClient, Client, Retry
from ._types import Classification, ClassifyInput, Entity, ModelInfo, Variant

__all__ = ["AsyncClient", "Client", "Retry", "RETRIED", "Classification", "ClassifyInput", "Entity",
           "ModelInfo", "Variant"]
__version__ = "0.1.0"
