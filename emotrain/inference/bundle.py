"""A bundle: everything one process needs to apply a trained system, in one folder, without DeepSpeed.

Layout (the one place it is spelled out)::

    BUNDLE/bundle.json               BundleInfo: format, classes, label scheme, per model its kind,
                                     temperature, batch size, precision and source run (with its val
                                     scores); the fusion strategy chosen on val with its fitted
                                     parameters and val scores; versions and git revision
    BUNDLE/<audio|video>/model.safetensors   the model's fp32 weights
    BUNDLE/<audio|video>/model.yaml          its ModelConfig (pretrained encoders point at encoders/<part>)
    BUNDLE/<audio|video>/data.yaml           the DataConfig it was trained with (frames, image size,
                                             seconds, text fields; tokenizer: tokenizer)
    BUNDLE/<audio|video>/vocab.json          its metadata vocabularies (id = position + 1)
    BUNDLE/<audio|video>/tokenizer/          the tokenizer files
    BUNDLE/<audio|video>/encoders/<part>/    the Hugging Face config of each pretrained encoder

Only JSON, YAML and safetensors are read back: nothing in a bundle is unpickled. A bundle with
one model predicts with that model alone.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from emotrain.log import get_logger
from emotrain.config import ConfigError, from_dict, load_config, to_dict
from emotrain.data.manifest import Manifest
from emotrain.data.stream import DataConfig, Modalities
from emotrain.errors import UserError
from emotrain.fusion.pipeline import FusionConfig, restore_strategy
from emotrain.names import FUSION_ROLES, ROLE_OF_KIND, VAL
from emotrain.labels import LabelScheme
from emotrain.models import ModelConfig

BUNDLE_FORMAT = 1
INFO_FILE = "bundle.json"
WEIGHTS_FILE, MODEL_FILE, DATA_FILE, VOCAB_FILE, TOKENIZER_DIR, ENCODERS_DIR = (
    "model.safetensors", "model.yaml", "data.yaml", "vocab.json", "tokenizer", "encoders")
KIND_OF = {role: kind for kind, role in ROLE_OF_KIND.items()}  # bundle model name -> model.kind
ENCODER_KINDS = {"text": "bert", "audio": "wav2vec2", "video": "timesformer"}  # ModelConfig part -> encoder kind


@dataclass
class BundledModel:
    """One model of a bundle, as ``bundle.json`` records it."""

    kind: str  # audio_text | video_text
    temperature: float  # fitted on val by the fusion (1.0 when the bundle was made without one: uncalibrated)
    calibrated: bool
    batch_size: int  # the run's eval batch size
    bf16: bool  # scored under bf16 autocast, as evaluate scores it
    source: dict[str, Any] = field(default_factory=dict)  # run, checkpoint, checkpoint kind, val scores

    def validate(self) -> None:
        if self.kind not in KIND_OF.values():
            raise ValueError(f"kind must be one of {sorted(KIND_OF.values())}, got {self.kind!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")


@dataclass
class BundledFusion:
    """The strategy chosen on val, its fitted parameters and the config it was fitted with."""

    strategy: str
    params: dict[str, Any]
    config: FusionConfig
    val_scores: dict[str, float] = field(default_factory=dict)  # the chosen strategy's val macro-F1 and NLL
    source: str = ""  # the fusion report folder it came from


@dataclass
class BundleInfo:
    """``bundle.json``."""

    format: int
    classes: list[str]
    scheme: LabelScheme
    models: dict[str, BundledModel]
    fusion: BundledFusion | None = None
    versions: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.format != BUNDLE_FORMAT:
            raise ValueError(f"format {self.format} is not the format this emotrain reads ({BUNDLE_FORMAT}): "
                             "make the bundle again with this version, or use the version that made it")
        unknown = sorted(set(self.models) - set(KIND_OF))
        if unknown or not self.models:
            raise ValueError(f"models must name audio and/or video (got {sorted(self.models)})")
        for name, model in self.models.items():
            if model.kind != KIND_OF[name]:
                raise ValueError(f"models.{name} is a {model.kind} model, not {KIND_OF[name]}")
        if self.fusion is not None and set(self.models) != set(FUSION_ROLES):
            raise ValueError("a fusion needs both an audio and a video model")
        if list(self.scheme.classes) != list(self.classes):
            raise ValueError("classes differ from the label scheme's")


@dataclass
class ModelSource:
    """What goes into a bundle for one model: its trained weights and the settings it was trained with."""

    model: ModelConfig
    data: DataConfig
    weights: dict[str, Any]  # state dict (tensors)
    vocab: dict[str, list[str]]
    scheme: LabelScheme
    batch_size: int
    bf16: bool
    source: dict[str, Any]


def source_from_run(run_dir: Path, tag: str | None = None, last: bool = False) -> ModelSource:
    """A run's (or an ``emotrain export`` folder's) model: its weights, config, and its shards' vocabularies and scheme."""
    from emotrain.evaluation.report_file import EvalReport
    from emotrain.evaluation.trained_model import trained_weights
    from emotrain.training.rundir import RunDir

    run = RunDir(run_dir).require()
    cfg = run.read_config()
    weights, tag, kind = trained_weights(run, tag, last)
    manifest = Manifest.load(cfg.data.shards, "train")
    source: dict[str, Any] = {"run": str(run.root.resolve()), "checkpoint": tag, "checkpoint_kind": kind}
    if run.eval_report(VAL).is_file():  # not evaluated on val: the bundle says nothing about it
        val = EvalReport.load(run.eval_report(VAL)).metrics(VAL)
        source[VAL] = {k: val[k] for k in ("accuracy", "macro_f1", "nll", "n") if k in val}
    return ModelSource(cfg.model, cfg.data, weights, manifest.vocab, manifest.scheme, cfg.eval_batch_size,
                       cfg.train.bf16, source)


def fusion_from_report(report_dir: Path, runs: dict[str, Path]) -> tuple[BundledFusion, dict[str, float]]:
    """The chosen strategy of ``emotrain fuse --out REPORT_DIR`` and each model's temperature; it must have
    been fitted on these runs."""
    from emotrain.fusion.fusion_file import FUSION_FILE, FusionSummary

    summary = FusionSummary.load(report_dir)
    for name, run in runs.items():
        if summary.fitted_on(name).resolve() != run.resolve():
            raise UserError(f"{report_dir / FUSION_FILE} was fitted on {name} run {summary.fitted_on(name)}, not {run}")
    temperatures = {name: summary.temperature(name) for name in FUSION_ROLES}
    return (BundledFusion(summary.chosen, summary.chosen_params, summary.fusion_config(), summary.chosen_val_scores,
                          str(report_dir.resolve())), temperatures)


def _write_encoder_configs(model: ModelConfig, folder: Path) -> ModelConfig:
    """The model config with every pretrained encoder pointing at its own config saved in the bundle, so
    building the model needs neither the hub nor the cache (the weights are all in model.safetensors)."""
    from emotrain.models.encoders import encoder_config

    parts = {}
    for part, kind in ENCODER_KINDS.items():
        spec = getattr(model, part)
        if spec is None or spec.pretrained is None:
            continue
        target = folder / ENCODERS_DIR / part
        encoder_config(kind, spec).save_pretrained(str(target))
        parts[part] = replace(spec, pretrained=str(target.relative_to(folder)))
    return replace(model, **parts)


def _write_yaml(path: Path, data: Any) -> None:
    path.write_text(yaml.safe_dump(to_dict(data), sort_keys=False), encoding="utf-8")


def write_bundle(out: Path, sources: dict[str, ModelSource], fusion: BundledFusion | None,
                 temperatures: dict[str, float] | None = None) -> Path:
    """Write a bundle of ``sources`` (name -> model) and the fusion into ``out`` (which must not exist yet);
    written beside and renamed, so a half-written bundle never sits at ``out``."""
    from emotrain.data.text import load_tokenizer
    from emotrain.evaluation.export import save_weights
    from emotrain.training.runlog import versions

    if out.exists():
        raise UserError(f"{out} exists: bundle into a new folder (or remove it)")
    schemes = {name: src.scheme.to_dict() for name, src in sources.items()}
    if len({json.dumps(s, sort_keys=True) for s in schemes.values()}) > 1:
        raise UserError(f"the models were trained under different label schemes: {schemes}")
    scheme = next(iter(sources.values())).scheme
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    models: dict[str, BundledModel] = {}
    for name, src in sources.items():
        if src.model.kind != KIND_OF[name]:
            raise UserError(f"the {name} model is a {src.model.kind} run, not {KIND_OF[name]}")
        folder = tmp / name
        folder.mkdir(parents=True)
        save_weights(src.weights, folder / WEIGHTS_FILE, {"run": str(src.source.get("run", ""))})
        load_tokenizer(src.data.text.tokenizer).save_pretrained(str(folder / TOKENIZER_DIR))
        _write_yaml(folder / MODEL_FILE, _write_encoder_configs(src.model, folder))
        data = replace(src.data, shards="", text=replace(src.data.text, tokenizer=TOKENIZER_DIR))
        _write_yaml(folder / DATA_FILE, data)
        temperature = (temperatures or {}).get(name)
        (folder / VOCAB_FILE).write_text(json.dumps(src.vocab, ensure_ascii=False) + "\n", encoding="utf-8")
        models[name] = BundledModel(src.model.kind, temperature or 1.0, temperature is not None, src.batch_size,
                                    src.bf16, src.source)
    info = BundleInfo(BUNDLE_FORMAT, list(scheme.classes), scheme, models, fusion, versions())
    info.validate()
    (tmp / INFO_FILE).write_text(json.dumps(to_dict(info), indent=1) + "\n", encoding="utf-8")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)
    return out


@dataclass
class LoadedModel:
    """One bundled model, built and loaded, ready to score batches."""

    name: str
    module: Any  # torch.nn.Module, in eval mode
    model: ModelConfig
    data: DataConfig
    vocab: dict[str, list[str]]
    entry: BundledModel

    @property
    def modalities(self) -> Modalities:
        return Modalities(audio=self.model.needs_audio, video=self.model.needs_video)


@dataclass
class Bundle:
    """A loaded bundle: its info, its models and the fitted fusion strategy (None with one model)."""

    root: Path
    info: BundleInfo
    models: dict[str, LoadedModel]
    strategy: Any  # FusionStrategy | None

    @property
    def classes(self) -> list[str]:
        return self.info.classes


def read_info(root: Path) -> BundleInfo:
    """``bundle.json``, validated; anything wrong is one line naming the file."""
    path = root / INFO_FILE
    if not root.is_dir():
        raise UserError(f"bundle not found: {root}")
    if not path.is_file():
        raise UserError(f"{root} is not a bundle: {INFO_FILE} is missing (make one with `emotrain bundle`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        if data.get("format") != BUNDLE_FORMAT:  # before the rest: a newer layout may not parse at all
            raise ValueError(f"format {data.get('format')!r} is not the format this emotrain reads ({BUNDLE_FORMAT})")
        return from_dict(BundleInfo, data)
    except (ValueError, UnicodeDecodeError, ConfigError) as err:
        raise UserError(f"{path}: {err}") from None


def _warn_versions(info: BundleInfo) -> None:
    """A bundle made with another major version of torch or transformers usually loads; say so once."""
    from importlib import metadata

    made = info.versions.get("packages", {}) if isinstance(info.versions, dict) else {}
    for name in ("torch", "transformers"):
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        want = made.get(name)
        if want and want.split(".")[0] != have.split(".")[0]:
            get_logger(__name__).warning(f"emotrain: warning: the bundle was made with {name} {want}, this is {have}")


def _load_model(root: Path, name: str, entry: BundledModel, num_classes: int, device: Any) -> LoadedModel:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from emotrain.data.schema import meta_vocab_sizes
    from emotrain.models import build_model
    from emotrain.training.run_config import check_inputs_fit

    folder = root / name
    try:
        model_cfg = load_config(ModelConfig, folder / MODEL_FILE)
        data_cfg = load_config(DataConfig, folder / DATA_FILE)
        check_inputs_fit(model_cfg, data_cfg)
    except (ConfigError, ValueError) as err:
        raise UserError(f"{folder}: {err}") from None
    vocab = _read_vocab(folder / VOCAB_FILE)
    if model_cfg.kind != entry.kind:
        raise UserError(f"{folder / MODEL_FILE}: a {model_cfg.kind} model, but {INFO_FILE} says {entry.kind}")
    weights_path = folder / WEIGHTS_FILE
    try:
        weights = load_file(str(weights_path))
    except (SafetensorError, OSError) as err:
        raise UserError(f"{weights_path}: not a readable safetensors file ({err})") from None
    module = build_model(model_cfg, num_classes, meta_vocab_sizes(vocab), load_weights=False)
    try:
        module.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split("\n\t")[:2]).strip()
        raise UserError(f"{weights_path} does not fit the {name} model of {MODEL_FILE}: {detail[:300]}") from None
    return LoadedModel(name, module.to(device).eval(), model_cfg, data_cfg, vocab, entry)


def _read_vocab(path: Path) -> dict[str, list[str]]:
    """A model's metadata vocabularies: field -> values, checked like the manifest's."""
    from emotrain.data.schema import VOCAB_FIELDS

    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not readable JSON ({err})") from None
    if not (isinstance(vocab, dict) and set(vocab) <= set(VOCAB_FIELDS)
            and all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in vocab.values())):
        raise UserError(f"{path}: expected {{field: [values]}} with fields from {list(VOCAB_FIELDS)}")
    return vocab


def load_bundle(root: str | Path, device: Any = None) -> Bundle:
    """Read and check a bundle and build its models on ``device`` (default: CPU)."""
    import torch

    root = Path(root)
    info = read_info(root)
    _warn_versions(info)
    device = device or torch.device("cpu")
    models = {name: _load_model(root, name, entry, len(info.classes), device) for name, entry in info.models.items()}
    strategy = None
    if info.fusion is not None:
        try:
            strategy = restore_strategy(info.fusion.strategy, info.fusion.params, info.fusion.config)
        except ValueError as err:
            raise UserError(f"{root / INFO_FILE}: fusion: {err}") from None
        expected = tuple(info.models[name].temperature for name in FUSION_ROLES)
        if any(abs(a - b) > 1e-9 * max(1.0, abs(b)) for a, b in zip(strategy.temperatures, expected)):
            raise UserError(f"{root / INFO_FILE}: the fusion's temperatures {strategy.temperatures} are not the "
                            f"models' {expected}")
    return Bundle(root, info, models, strategy)
