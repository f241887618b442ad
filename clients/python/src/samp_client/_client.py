"""The samp clients: `Client` (blocking) and `AsyncClient` (asyncio), over one gRPC channel each."""
from __future__ import annotations

import asyncio
import random
import time
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple, Union

import grpc
import numpy as np

from . import _types
from ._proto import samp_pb2 as pb
from ._proto import samp_pb2_grpc as pb_grpc
from ._types import Classification, ClassifyInput, Entity, ModelInfo

#: Codes a call is retried on: the server refused it at the door (queue full, deadline out of
#: reach of the queued work) or is not serving (restarting, shutting down, a pod going away).
RETRIED = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)

_AGGREGATIONS = {"none": pb.AGGREGATION_NONE, "simple": pb.AGGREGATION_SIMPLE, "first": pb.AGGREGATION_FIRST,
                 "average": pb.AGGREGATION_AVERAGE, "max": pb.AGGREGATION_MAX}


class Retry:
    """Exponential backoff with full jitter, within the call's own deadline.

    A call is tried at most `attempts` times; before try n+1 it sleeps a random time up to
    min(max_backoff, backoff * 2**n), never past the deadline. Each try gets the time left.
    """

    def __init__(self, attempts: int = 5, backoff: float = 0.05, max_backoff: float = 2.0,
                 sleep: Callable[[float], Any] = time.sleep):
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.attempts, self.backoff, self.max_backoff, self.sleep = attempts, backoff, max_backoff, sleep

    def pause(self, n: int) -> float:
        return random.uniform(0, min(self.max_backoff, self.backoff * (2 ** n)))


def _channel_options(target: str, options: Optional[Sequence[Tuple[str, Any]]]) -> List[Tuple[str, Any]]:
    opts = list(options or [])
    opts.append(("grpc.max_receive_message_length", 64 * 1024 * 1024))
    if target.startswith("dns:") and not any(k == "grpc.lb_policy_name" for k, _ in opts):
        # A Kubernetes headless Service resolves to every pod: spread calls over them.
        opts.append(("grpc.lb_policy_name", "round_robin"))
    return opts


def _metadata(token: Optional[str]) -> Optional[List[Tuple[str, str]]]:
    return [("authorization", f"Bearer {token}")] if token else None


def _texts(texts: Union[str, Iterable[str]]) -> Tuple[List[str], bool]:
    if isinstance(texts, str):
        return [texts], True
    return list(texts), False


def _classify_inputs(inputs: Union[ClassifyInput, Iterable[ClassifyInput]]) -> Tuple[List[Any], bool]:
    single = isinstance(inputs, str) or (isinstance(inputs, tuple) and len(inputs) == 2
                                         and all(isinstance(x, str) for x in inputs))
    items = [inputs] if single else list(inputs)
    out = []
    for i, x in enumerate(items):
        if isinstance(x, str):
            out.append(pb.ClassifyInput(text=x))
        elif isinstance(x, (tuple, list)) and len(x) == 2:
            out.append(pb.ClassifyInput(pair=pb.TextPair(a=x[0], b=x[1])))
        else:
            raise TypeError(f"classify input {i}: a text or a (text, text) pair, not {type(x).__name__}")
    return out, single


def _aggregation(name: str) -> int:
    try:
        return _AGGREGATIONS[name]
    except KeyError:
        raise ValueError(f"aggregation {name!r}: one of {', '.join(_AGGREGATIONS)}") from None


def _matrix(reply) -> np.ndarray:
    if not reply.embeddings:
        return np.zeros((0, 0), dtype=np.float32)
    return np.array([e.values for e in reply.embeddings], dtype=np.float32)


def _convert(rows: np.ndarray, single: bool, convert_to_numpy: bool, convert_to_tensor: bool, device):
    """sentence-transformers' output conventions."""
    if convert_to_tensor:
        import torch  # optional: pip install samp-client[torch]

        t = torch.from_numpy(rows)
        if device is not None:
            t = t.to(device)
        return t[0] if single else t
    if convert_to_numpy:
        return rows[0] if single else rows
    return rows[0] if single else list(rows)


class _Base:
    def __init__(self, model: Optional[str], variant: Optional[str], timeout: Optional[float],
                 token: Optional[str], retry: Optional[Retry]):
        self.model, self.variant, self.timeout = model or "", variant or "", timeout
        self._metadata = _metadata(token)
        self.retry = retry or Retry()

    def _embed_request(self, texts, model, variant, normalize, dimensions) -> pb.EmbedRequest:
        m, v = self._pick(model, variant)
        return pb.EmbedRequest(texts=texts, model=m, variant=v, normalize=normalize, dimensions=dimensions or 0)

    def _pick(self, model: Optional[str], variant: Optional[str]) -> Tuple[str, str]:
        return (model if model is not None else self.model, variant if variant is not None else self.variant)

    def _classify_request(self, inputs, model, variant) -> pb.ClassifyRequest:
        items, _ = _classify_inputs(inputs)
        m, v = self._pick(model, variant)
        return pb.ClassifyRequest(inputs=items, model=m, variant=v)

    def _tag_request(self, texts, aggregation, model, variant) -> pb.TagRequest:
        items, _ = _texts(texts)
        m, v = self._pick(model, variant)
        return pb.TagRequest(texts=items, model=m, variant=v, aggregation=_aggregation(aggregation))

    def _should_retry(self, e: grpc.RpcError, attempt: int, deadline: Optional[float]) -> Optional[float]:
        """The pause before the next try, or None when `e` is final."""
        pause = self.retry.pause(attempt)
        last = attempt + 1 == self.retry.attempts
        late = deadline is not None and time.monotonic() + pause >= deadline
        return None if e.code() not in RETRIED or last or late else pause

    def _left(self, deadline: Optional[float]) -> Optional[float]:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise _deadline_error()
        return left

    def _deadline(self, timeout: Optional[float]) -> Optional[float]:
        t = timeout if timeout is not None else self.timeout
        return None if t is None else time.monotonic() + t


class Client(_Base):
    """A blocking samp client.

    >>> c = Client("localhost:50051")
    >>> c.encode(["hello", "world"]).shape        # like SentenceTransformer.encode
    (2, 384)
    >>> c.classify("I love it")[0].label
    'POSITIVE'

    `target` is a gRPC target: `host:port`, or `dns:///svc.ns.svc.cluster.local:50051` for a
    Kubernetes headless Service (calls are then spread round-robin over its pods). `model` and
    `variant` are the defaults of every call (empty: the server picks the model that does the
    task, and its default variant). `timeout` is each call's deadline in seconds, retries
    included; calls refused with RESOURCE_EXHAUSTED or UNAVAILABLE are retried with backoff
    (`retry`). `token` is sent as `authorization: Bearer`; `credentials` makes a TLS channel.
    """

    def __init__(self, target: str = "localhost:50051", *, model: Optional[str] = None,
                 variant: Optional[str] = None, timeout: Optional[float] = 30.0, token: Optional[str] = None,
                 credentials: Optional[grpc.ChannelCredentials] = None, retry: Optional[Retry] = None,
                 options: Optional[Sequence[Tuple[str, Any]]] = None):
        super().__init__(model, variant, timeout, token, retry)
        opts = _channel_options(target, options)
        self.channel = (grpc.secure_channel(target, credentials, opts) if credentials
                        else grpc.insecure_channel(target, opts))
        self._stub = pb_grpc.SampStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method, request, timeout: Optional[float] = None):
        deadline = self._deadline(timeout)
        for attempt in range(self.retry.attempts):
            try:
                return method(request, timeout=self._left(deadline), metadata=self._metadata)
            except grpc.RpcError as e:
                pause = self._should_retry(e, attempt, deadline)
                if pause is None:
                    raise
                self.retry.sleep(pause)
        raise AssertionError("unreachable")

    def embed(self, texts: Union[str, Iterable[str]], *, model: Optional[str] = None,
              variant: Optional[str] = None, normalize: Optional[bool] = None, dimensions: Optional[int] = None,
              timeout: Optional[float] = None) -> np.ndarray:
        """Embeddings of `texts` as a float32 matrix, one row per text (one call)."""
        items, _ = _texts(texts)
        reply = self._call(self._stub.Embed, self._embed_request(items, model, variant, normalize, dimensions),
                           timeout)
        return _matrix(reply)

    def encode(self, sentences: Union[str, Sequence[str]], batch_size: int = 32, show_progress_bar: Optional[bool] = None,
               output_value: str = "sentence_embedding", convert_to_numpy: bool = True,
               convert_to_tensor: bool = False, device: Optional[str] = None, normalize_embeddings: bool = False,
               *, model: Optional[str] = None, variant: Optional[str] = None, dimensions: Optional[int] = None,
               timeout: Optional[float] = None, **_ignored):
        """`SentenceTransformer.encode`, served: same arguments, same return conventions (a
        1-D array for one string, a 2-D array for a list; a torch tensor with
        `convert_to_tensor`). `normalize_embeddings=True` asks for unit vectors; otherwise the
        model's own pipeline decides (all-MiniLM-L6-v2 normalizes). Texts go in calls of
        `batch_size`; the server batches them with other clients' work."""
        if output_value not in ("sentence_embedding", None):
            raise ValueError(f"output_value {output_value!r}: samp serves sentence embeddings only")
        items, single = _texts(sentences)
        normalize = True if normalize_embeddings else None
        rows = [self.embed(items[i:i + batch_size], model=model, variant=variant, normalize=normalize,
                           dimensions=dimensions, timeout=timeout)
                for i in range(0, len(items), max(1, batch_size))]
        matrix = np.concatenate(rows) if rows else np.zeros((0, 0), dtype=np.float32)
        return _convert(matrix, single, convert_to_numpy, convert_to_tensor, device)

    def classify(self, inputs: Union[ClassifyInput, Iterable[ClassifyInput]], *, model: Optional[str] = None,
                 variant: Optional[str] = None, timeout: Optional[float] = None) -> List[Classification]:
        """One `Classification` per input (a text or a pair of texts)."""
        req = self._classify_request(inputs, model, variant)
        return [_types.classification(r) for r in self._call(self._stub.Classify, req, timeout).results]

    def tag(self, texts: Union[str, Iterable[str]], *, aggregation: str = "simple", model: Optional[str] = None,
            variant: Optional[str] = None, timeout: Optional[float] = None) -> List[List[Entity]]:
        """The entities of each text (character offsets), one list per text."""
        req = self._tag_request(texts, aggregation, model, variant)
        return [_types.entities(r) for r in self._call(self._stub.Tag, req, timeout).results]

    def models(self, timeout: Optional[float] = None) -> List[ModelInfo]:
        """Every loaded model, its task, labels and variants (with measured scores)."""
        reply = self._call(self._stub.ListModels, pb.ListModelsRequest(), timeout)
        return [_types.model_info(m) for m in reply.models]


class AsyncClient(_Base):
    """The asyncio twin of `Client` (grpc.aio): the same methods, awaited. `encode` sends its
    batches concurrently (at most `concurrency` in flight)."""

    def __init__(self, target: str = "localhost:50051", *, model: Optional[str] = None,
                 variant: Optional[str] = None, timeout: Optional[float] = 30.0, token: Optional[str] = None,
                 credentials: Optional[grpc.ChannelCredentials] = None, retry: Optional[Retry] = None,
                 options: Optional[Sequence[Tuple[str, Any]]] = None, concurrency: int = 4):
        super().__init__(model, variant, timeout, token, retry or Retry(sleep=asyncio.sleep))
        opts = _channel_options(target, options)
        self.channel = (grpc.aio.secure_channel(target, credentials, opts) if credentials
                        else grpc.aio.insecure_channel(target, opts))
        self._stub = pb_grpc.SampStub(self.channel)
        self.concurrency = max(1, concurrency)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _call(self, method, request, timeout: Optional[float] = None):
        deadline = self._deadline(timeout)
        for attempt in range(self.retry.attempts):
            try:
                return await method(request, timeout=self._left(deadline), metadata=self._metadata)
            except grpc.RpcError as e:
                pause = self._should_retry(e, attempt, deadline)
                if pause is None:
                    raise
                await self.retry.sleep(pause)
        raise AssertionError("unreachable")

    async def embed(self, texts: Union[str, Iterable[str]], *, model: Optional[str] = None,
                    variant: Optional[str] = None, normalize: Optional[bool] = None,
                    dimensions: Optional[int] = None, timeout: Optional[float] = None) -> np.ndarray:
        items, _ = _texts(texts)
        reply = await self._call(self._stub.Embed,
                                 self._embed_request(items, model, variant, normalize, dimensions), timeout)
        return _matrix(reply)

    async def encode(self, sentences: Union[str, Sequence[str]], batch_size: int = 32,
                     show_progress_bar: Optional[bool] = None, output_value: str = "sentence_embedding",
                     convert_to_numpy: bool = True, convert_to_tensor: bool = False, device: Optional[str] = None,
                     normalize_embeddings: bool = False, *, model: Optional[str] = None,
                     variant: Optional[str] = None, dimensions: Optional[int] = None,
                     timeout: Optional[float] = None, **_ignored):
        if output_value not in ("sentence_embedding", None):
            raise ValueError(f"output_value {output_value!r}: samp serves sentence embeddings only")
        items, single = _texts(sentences)
        normalize = True if normalize_embeddings else None
        gate = asyncio.Semaphore(self.concurrency)

        async def one(chunk):
            async with gate:
                return await self.embed(chunk, model=model, variant=variant, normalize=normalize,
                                        dimensions=dimensions, timeout=timeout)

        step = max(1, batch_size)
        rows = await asyncio.gather(*(one(items[i:i + step]) for i in range(0, len(items), step)))
        matrix = np.concatenate(rows) if rows else np.zeros((0, 0), dtype=np.float32)
        return _convert(matrix, single, convert_to_numpy, convert_to_tensor, device)

    async def classify(self, inputs: Union[ClassifyInput, Iterable[ClassifyInput]], *,
                       model: Optional[str] = None, variant: Optional[str] = None,
                       timeout: Optional[float] = None) -> List[Classification]:
        req = self._classify_request(inputs, model, variant)
        reply = await self._call(self._stub.Classify, req, timeout)
        return [_types.classification(r) for r in reply.results]

    async def tag(self, texts: Union[str, Iterable[str]], *, aggregation: str = "simple",
                  model: Optional[str] = None, variant: Optional[str] = None,
                  timeout: Optional[float] = None) -> List[List[Entity]]:
        req = self._tag_request(texts, aggregation, model, variant)
        reply = await self._call(self._stub.Tag, req, timeout)
        return [_types.entities(r) for r in reply.results]

    async def models(self, timeout: Optional[float] = None) -> List[ModelInfo]:
        reply = await self._call(self._stub.ListModels, pb.ListModelsRequest(), timeout)
        return [_types.model_info(m) for m in reply.models]


class _DeadlineExceeded(grpc.RpcError):
    """The call's deadline passed between retries (before another try could start)."""

    def code(self):
        return grpc.StatusCode.DEADLINE_EXCEEDED

    def details(self):
        return "deadline exceeded between retries"


def _deadline_error() -> grpc.RpcError:
    return _DeadlineExceeded()
