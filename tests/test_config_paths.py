"""One config resolution pass: paths in a YAML are relative to that file, command-line paths to the
working directory, packaged configs are found by name, and a saved run config works anywhere."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from emotrain.config import CONFIG_ROOT, ConfigError, config_names, find_config, read_yaml, to_dict
from emotrain.labels import load_scheme
from emotrain.training.run_config import load_run_config


def test_packaged_configs_are_found_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_config("demo/audio_text") == CONFIG_ROOT / "demo" / "audio_text.yaml"
    assert find_config("deepspeed/zero1") == find_config("deepspeed/zero1.json") == CONFIG_ROOT / "deepspeed" / "zero1.json"
    assert load_scheme("ekman7").classes[0] == "happy" and "ed32" in config_names("labels")
    with pytest.raises(ConfigError, match="packaged configs.*demo/audio_text"):
        find_config("demo/nope")


def test_paths_in_a_yaml_are_relative_to_it_and_overrides_to_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "cfgs" / "model").mkdir(parents=True)
    (tmp_path / "cfgs" / "model" / "tiny.yaml").write_text((CONFIG_ROOT / "model" / "audio_text_tiny.yaml").read_text())
    (tmp_path / "cfgs" / "run").mkdir()
    run_yaml = tmp_path / "cfgs" / "run" / "a.yaml"
    run_yaml.write_text(yaml.safe_dump({
        "model": "../model/tiny.yaml",
        "data": {"shards": "../../shards/x", "text": {"tokenizer": str(CONFIG_ROOT / "tokenizers" / "tiny-wordpiece")}},
        "train": {"total_samples": 32, "deepspeed_config": "deepspeed/zero1.json"},
    }))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_run_config(run_yaml)
    assert cfg.model.kind == "audio_text" and cfg.data.shards == str(tmp_path / "shards" / "x")
    assert cfg.train.deepspeed_config == str(CONFIG_ROOT / "deepspeed" / "zero1.json")  # by packaged name
    cfg = load_run_config(run_yaml, ["data.shards=here", "model.hidden=48"])
    assert cfg.data.shards == str(elsewhere / "here") and cfg.model.hidden == 48


def test_an_override_leaves_the_files_hub_names_alone(tmp_path, monkeypatch):
    (tmp_path / "bert-base-uncased").mkdir()  # a folder that happens to share the hub name
    monkeypatch.chdir(tmp_path)
    cfg = load_run_config("train/audio_text", ["data.shards=s"])
    assert cfg.data.text.tokenizer == cfg.model.text.pretrained == "bert-base-uncased"
    cfg = load_run_config("train/audio_text", ["data.shards=s", "data.text.tokenizer=bert-base-uncased"])
    assert cfg.data.text.tokenizer == str(tmp_path / "bert-base-uncased")  # given here: the local folder wins


def test_a_saved_run_config_holds_only_absolute_paths_and_loads_anywhere(tmp_path, monkeypatch):
    cfg = load_run_config("demo/audio_text", ["data.shards=shards/demo"])
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(to_dict(cfg)))
    data = read_yaml(saved)
    for path in (data["data"]["shards"], data["data"]["text"]["tokenizer"], data["train"]["deepspeed_config"]):
        assert Path(path).is_absolute(), path
    monkeypatch.chdir(tmp_path)
    assert to_dict(load_run_config(saved)) == to_dict(cfg)


def test_broken_yaml_is_one_line_with_the_place(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\ntrain: {}\n")
    with pytest.raises(ConfigError) as err:
        read_yaml(bad)
    assert str(err.value).startswith(f"{bad}:") and "\n" not in str(err.value)
