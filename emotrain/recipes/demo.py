"""The demo's settings: what ``configs/demo/demo.yaml`` holds (the corpus to synthesise, how to pack it,
the two training configs and their overrides, the fusion config, the CPU ranks).

``emotrain demo`` runs them once; the multi-seed variant (:mod:`emotrain.sweep.demo`) runs them as a
sweep over training seeds. Config classes live with what they configure, so both read them from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from emotrain.config import path_field
from emotrain.data.prepared import PreparedVideo
from emotrain.data.synthetic import SynthSpec
from emotrain.names import MODEL_KINDS as MODELS

DEFAULT_CONFIG = "demo/demo"


@dataclass
class CorpusSettings:
    conversations: int = 600
    seed: int = 0
    workers: int = 2
    spec: SynthSpec = field(default_factory=SynthSpec)


@dataclass
class PackSettings:
    labels: str = "ekman7"
    val_frac: float = 0.2
    test_frac: float = 0.2
    max_per_shard: int = 16
    workers: int = 2
    video: PreparedVideo | None = None  # {frames, size}: pack --prepare-video; None keeps the mp4s


@dataclass
class DemoConfig:
    """What ``configs/demo/demo.yaml`` holds; config paths in it are relative to that file."""

    corpus: CorpusSettings = field(default_factory=CorpusSettings)
    pack: PackSettings = field(default_factory=PackSettings)
    processes: int = 2
    train_configs: dict[str, str] = path_field("config", default_factory=dict)
    train_overrides: list[str] = field(default_factory=list)
    model_overrides: dict[str, list[str]] = field(default_factory=dict)
    fusion: str = path_field("config", default="fusion/default")

    def validate(self) -> None:
        if self.processes < 1:
            raise ValueError("processes must be >= 1")
        if sorted(self.train_configs) != sorted(MODELS):
            raise ValueError(f"train_configs must name exactly {', '.join(MODELS)}")
        if not set(self.model_overrides) <= set(MODELS):
            raise ValueError(f"model_overrides may only name {', '.join(MODELS)}")
        if self.corpus.conversations < 20:
            raise ValueError("corpus.conversations must be >= 20 so val and test are not empty")
