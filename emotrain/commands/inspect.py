"""``emotrain inspect CONFIG``: trainable / frozen / total parameters per top-level module.

Works offline and without weights: the model is built on the meta device (no memory, no
init cost) and a pretrained name whose config is not in the local cache is replaced by the
config class defaults, which equal the standard base models (``BertConfig()`` =
bert-base-uncased, ``Wav2Vec2Config()`` = wav2vec2-base, ``TimesformerConfig()`` =
timesformer-base), so the counts are those of the named models.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from emotrain.config import apply_overrides, find_config, from_dict, read_yaml, resolve_paths
from emotrain.data.manifest import Manifest
from emotrain.data.schema import META_FIELDS, meta_vocab_sizes
from emotrain.errors import UserError
from emotrain.models.build import build_model
from emotrain.models.model_config import ModelConfig

DEFAULT_META_VOCAB = 64
DEFAULT_NUM_CLASSES = 7


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="a model YAML (model/audio_text) or a run YAML with a `model:` section; a file or a packaged "
                        "name such as model/audio_text")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. text.freeze_layers=0 (model.… for a run YAML)")
    parser.add_argument("--manifest", help="a split's manifest.json (or its folder): metadata vocab sizes and classes")


@dataclass
class RunModel:
    """The part of a run YAML that ``inspect`` reads."""

    model: ModelConfig


def model_data(config: str, overrides: list[str]) -> dict[str, Any]:
    """The model mapping of a model YAML, or of a run YAML's ``model`` section (inline, or a path or
    packaged name of a model YAML), paths resolved and overrides applied (``model.…`` for a run YAML)."""
    file = find_config(config)
    data = read_yaml(file)
    if "model" in data:
        stray = [o for o in overrides if not o.startswith("model.")]
        if stray:
            raise UserError(f"{file} is a run config: overrides name its model section, e.g. model.{stray[0]}")
        return apply_overrides(resolve_paths(RunModel, {"model": data["model"]}, file.parent), overrides)["model"]
    return apply_overrides(resolve_paths(ModelConfig, data, file.parent), overrides)


def parameter_table(model: Any) -> list[tuple[str, int, int]]:
    """(top-level name, trainable, frozen) per module or bare parameter, in definition order."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for name, param in model.named_parameters():
        counts[name.split(".")[0]][0 if param.requires_grad else 1] += param.numel()
    return [(name, trainable, frozen) for name, (trainable, frozen) in counts.items()]


def format_table(rows: list[tuple[str, int, int]]) -> str:
    width = max(len("total"), *(len(name) for name, _, _ in rows))
    lines = [f"{'module':<{width}}  {'trainable':>13}  {'frozen':>13}  {'total':>13}"]
    for name, trainable, frozen in rows + [("total", sum(r[1] for r in rows), sum(r[2] for r in rows))]:
        if name == "total":
            lines.append("-" * len(lines[0]))
        lines.append(f"{name:<{width}}  {trainable:>13,}  {frozen:>13,}  {trainable + frozen:>13,}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import torch

    config_path = args.config
    cfg = from_dict(ModelConfig, model_data(args.config, list(args.overrides)), "model")
    if args.manifest:
        manifest = Manifest.read(args.manifest)
        sizes = meta_vocab_sizes(manifest.vocab)
        num_classes = len(manifest.classes)
        source = f"metadata vocab and {num_classes} classes from {args.manifest}"
    else:
        sizes = {column: DEFAULT_META_VOCAB for column, _ in META_FIELDS}
        num_classes = DEFAULT_NUM_CLASSES
        source = f"no manifest: {DEFAULT_META_VOCAB} ids per metadata field and {num_classes} classes assumed"
    with torch.device("meta"):
        model = build_model(cfg, num_classes, sizes, load_weights=False)
    print(f"{config_path} ({cfg.kind}); {source}")
    for part in ("text", "audio", "video"):
        spec = getattr(cfg, part)
        if spec is not None:
            origin = f"pretrained {spec.pretrained} (architecture only)" if spec.pretrained else "from scratch"
            print(f"  {part}: {origin}")
    print(format_table(parameter_table(model)))
    return 0
