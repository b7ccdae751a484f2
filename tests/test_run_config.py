from pathlib import Path

import pytest

from emotrain.config import ConfigError
from emotrain.training.run_config import load_run_config

REPO = Path(__file__).resolve().parents[1]
RUN_CONFIGS = sorted(p for d in ("train", "rtx3060", "demo") for p in (REPO / "configs" / d).glob("*_text.yaml"))


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_run_config_loads(path):
    cfg = load_run_config(path)
    assert cfg.model.kind in path.name
    assert cfg.train.global_batch_size % cfg.train.micro_batch_size == 0


def test_rtx3060_configs_fit_one_12gb_card():
    for path in (REPO / "configs" / "rtx3060").glob("*.yaml"):
        cfg = load_run_config(path)
        assert cfg.train.micro_batch_size == 2 and cfg.train.bf16
        assert cfg.train.deepspeed_config.endswith("zero2_offload.json")
        assert cfg.model.text.gradient_checkpointing and cfg.model.text.freeze_layers >= 6


def test_loader_and_video_encoder_must_agree():
    with pytest.raises(ConfigError, match="frames"):
        load_run_config(REPO / "configs" / "demo" / "video_text.yaml", ["data.video.num_frames=8"])


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match="learning_rate"):
        load_run_config(REPO / "configs" / "demo" / "audio_text.yaml", ["train.learning_rate=1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: ../model/nope.yaml\ntrain: {total_samples: 10}\n")
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_run_config(bad)


def test_demo_config_loads_and_names_only_its_models():
    from emotrain.config import load_config
    from emotrain.recipes.demo import DEFAULT_CONFIG, DemoConfig

    cfg = load_config(DemoConfig, DEFAULT_CONFIG, ['model_overrides={"audio_text": ["train.lr=1e-3"]}'])
    assert cfg.model_overrides == {"audio_text": ["train.lr=1e-3"]}
    for model, path in cfg.train_configs.items():
        assert Path(path).is_absolute() and load_run_config(path).model.kind == model
    with pytest.raises(ConfigError, match="model_overrides"):
        load_config(DemoConfig, DEFAULT_CONFIG, ["model_overrides={audio: [train.lr=1e-3]}"])


def test_a_relaunch_with_another_model_or_data_contract_is_refused_and_leaves_the_run(tmp_path):
    from emotrain.errors import UserError
    from emotrain.training.rundir import RunDir
    from emotrain.recipes.train import check_same_contract

    run = RunDir(tmp_path / "run")
    cfg = load_run_config("demo/audio_text", [f"data.shards={tmp_path}"])
    check_same_contract(run, cfg)  # a new run: nothing to compare
    run.write_config(cfg)
    check_same_contract(run, cfg)  # a config but no checkpoint yet: a relaunch may change anything
    tag = run.checkpoints / "step00000010"
    tag.mkdir(parents=True)
    (tag / "complete").write_text("{}")
    before = run.config_path.read_bytes()
    more_steps = load_run_config("demo/audio_text", [f"data.shards={tmp_path}", "train.total_samples=99999"])
    check_same_contract(run, more_steps)  # training longer is a relaunch of the same run
    other = load_run_config("demo/audio_text", [f"data.shards={tmp_path}", "model.hidden=48", "data.turns=last"])
    with pytest.raises(UserError, match=r"model\.hidden \(32 -> 48\).*data\.turns|data\.turns.*model\.hidden"):
        check_same_contract(run, other)
    assert run.config_path.read_bytes() == before
