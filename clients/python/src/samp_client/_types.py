"""What samp answers, as plain typed values (the protobuf messages stay inside the client)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union

#: One input of `classify`: a text, or a pair of texts (e.g. premise and hypothesis).
ClassifyInput = Union[str, Tuple[str, str]]


@dataclass(frozen=True)
class Classification:
    label: str
    score: float
    #: Every label's probability.
    scores: Dict[str, float] = field(default_factory=dict)
    tokens: int = 0
    truncated: bool = False


@dataclass(frozen=True)
class Entity:
    label: str
    score: float
    #: Character offsets into the text: `text[start:end]`.
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class Variant:
    name: str
    precision: str
    default: bool
    #: The metric, score and drop `samp quantize` measured for this variant's plan, if known.
    metric: str = ""
    score: Optional[float] = None
    drop: Optional[float] = None


@dataclass(frozen=True)
class ModelInfo:
    name: str
    task: str
    architecture: str
    labels: List[str]
    max_tokens: int
    hidden_size: int
    layers: int
    variants: List[Variant]


def classification(m) -> Classification:
    return Classification(label=m.label, score=m.score, scores={s.label: s.score for s in m.scores},
                          tokens=m.tokens, truncated=m.truncated)


def entities(m) -> List[Entity]:
    return [Entity(label=e.label, score=e.score, start=e.start, end=e.end, text=e.text) for e in m.entities]


def model_info(m) -> ModelInfo:
    return ModelInfo(
        name=m.name, task=m.task, architecture=m.architecture, labels=list(m.labels),
        max_tokens=m.max_tokens, hidden_size=m.hidden_size, layers=m.layers,
        variants=[Variant(name=v.name, precision=v.precision, default=v.is_default, metric=v.metric,
                          score=v.score if v.HasField("score") else None,
                          drop=v.drop if v.HasField("drop") else None) for v in m.variants])
