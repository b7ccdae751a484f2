"""`emotrain sweep report` on synthetic points: the numbers come from the points' own files, the setting is
chosen on val even where test would pick another, and TensorBoard's HParams view reads back.

No training here: each point's ``report.json`` files, ``fusion.json`` and ``point.json`` are written by the
test, with values picked so that val and test disagree about the best setting.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from emotrain.evaluation.report_file import EvalReport
from emotrain.fusion.fusion_file import FusionSummary
from emotrain.cli import main
from emotrain.config import ConfigError, load_config
from emotrain.sweep.layout import SweepDir
from emotrain.sweep.spec import SweepConfig, expand_points, fusion_overrides, model_overrides
from emotrain.sweep.summary import METRICS, SPLITS, Stat

SEEDS = [0, 1, 2]
# setting -> split -> base macro-F1 of the fusion: "small" wins on val, "large" on test.
FUSION_F1 = {"lr=0.001": {"val": 0.70, "test": 0.50}, "lr=0.01": {"val": 0.60, "test": 0.65}}


def write_sweep_file(tmp_path: Path) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({
        "pair": {"audio_text": "demo/audio_text", "video_text": "demo/video_text", "fusion": "fusion/quick"},
        "grid": {"train.lr": [0.001, 0.01]}, "seeds": SEEDS, "shards": "shards/x",
        "overrides": ["audio_text.train.total_samples=64", "fusion.gating.hidden=8", "train.log_every_steps=1"],
    }))
    return path


def metric_block(rng: np.random.Generator, base: float) -> dict[str, float]:
    return {m: float(base + rng.normal(0, 0.02)) for m in METRICS} | {"n": 40}


def fake_point(sweep: SweepDir, cfg: SweepConfig, point, rng: np.random.Generator) -> None:
    pdir = sweep.point(point, cfg.models)
    for model in cfg.models:
        for split in SPLITS:
            report = pdir.run(model).eval_report(split)
            report.parent.mkdir(parents=True, exist_ok=True)
            EvalReport({split: metric_block(rng, 0.4)}).save(report)
    pdir.fusion.mkdir(parents=True)
    base = FUSION_F1[point.setting.name]
    FusionSummary(
        audio_run="a", video_run="v", classes=["x", "y"], chosen="stacking", chosen_on="val", params={
            "stacking": {}, "audio": {"temperature": 1.0}, "video": {"temperature": 1.0}},
        val_scores={"stacking": {"macro_f1": base["val"], "nll": 1.0}}, counts={}, config={},
        val={"fusion: stacking": metric_block(rng, base["val"])},
        test={"fusion: stacking": metric_block(rng, base["test"]), "audio (raw)": metric_block(rng, 0.1)},
    ).save(pdir.fusion)
    (pdir.root / "point.json").write_text(json.dumps({"status": "completed", "wall_s": 1.0}))


@pytest.fixture()
def fake_sweep(tmp_path):
    cfg = load_config(SweepConfig, write_sweep_file(tmp_path))
    cfg.name = "fake"
    sweep = SweepDir(tmp_path / "sweep")
    sweep.write_config(cfg)
    rng = np.random.default_rng(0)
    for point in expand_points(cfg):
        fake_point(sweep, cfg, point, rng)
    return cfg, sweep


def test_points_overrides_reach_the_right_model_and_the_fusion(tmp_path):
    cfg = load_config(SweepConfig, write_sweep_file(tmp_path))
    points = expand_points(cfg)
    assert [p.name for p in points] == [f"lr={lr}/seed{s}" for lr in ("0.001", "0.01") for s in SEEDS]
    shards = str(tmp_path / "shards" / "x")  # relative to the sweep file
    assert model_overrides(cfg, points[1], "audio_text") == [
        f"data.shards={shards}", "train.total_samples=64", "train.log_every_steps=1", "train.lr=0.001", "train.seed=1"]
    assert model_overrides(cfg, points[1], "video_text") == [
        f"data.shards={shards}", "train.log_every_steps=1", "train.lr=0.001", "train.seed=1"]
    assert fusion_overrides(cfg, points[1]) == ["gating.hidden=8"]


def test_a_bad_sweep_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"train_config": "demo/video_text", "seeds": [0], "gird": {"train.lr": [1]}}))
    with pytest.raises(ConfigError, match="unknown key.*gird"):
        load_config(SweepConfig, bad)
    bad.write_text(yaml.safe_dump({"train_config": "demo/video_text", "seeds": [0, 0]}))
    assert main(["sweep", "run", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "distinct" in err, err
    assert main(["sweep", "report", str(tmp_path / "nothing")]) == 2
    assert "not a sweep folder" in capsys.readouterr().err


def test_mean_and_std_are_those_of_the_points_own_reports(fake_sweep, capsys):
    cfg, sweep = fake_sweep
    assert main(["sweep", "report", str(sweep.root)]) == 0
    summary = json.loads(sweep.report_json.read_text())
    for setting in summary["settings"]:
        assert setting["seeds"] == SEEDS and setting["missing"] == []
        for seed_dir_metric in METRICS:
            for split in SPLITS:
                for system in ("audio_text", "video_text", "fusion"):
                    values = []
                    for seed in SEEDS:
                        root = sweep.root / "points" / setting["name"] / f"seed{seed}"
                        if system == "fusion":
                            data = json.loads((root / "fusion" / "fusion.json").read_text())[split]["fusion: stacking"]
                        else:
                            data = json.loads((root / system / "eval" / split / "report.json").read_text())["splits"][split]
                        values.append(data[seed_dir_metric])
                    stat = setting["stats"][system][split][seed_dir_metric]
                    assert stat["mean"] == pytest.approx(np.mean(values), abs=1e-12)
                    assert stat["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
                    half = 4.303 * np.std(values, ddof=1) / np.sqrt(3)  # t(0.975, 2 df)
                    assert stat["ci95"] == pytest.approx([np.mean(values) - half, np.mean(values) + half])
    table = sweep.report_markdown.read_text()
    assert "| **lr=0.001** (chosen) | fusion | 3 |" in table
    assert sweep.report_plot.stat().st_size > 1000


def test_the_setting_is_chosen_on_val_although_test_would_pick_another(fake_sweep):
    cfg, sweep = fake_sweep
    assert main(["sweep", "report", str(sweep.root)]) == 0
    summary = json.loads(sweep.report_json.read_text())
    stats = {s["name"]: s["stats"]["fusion"] for s in summary["settings"]}
    best_val = max(stats, key=lambda n: stats[n]["val"]["macro_f1"]["mean"])
    best_test = max(stats, key=lambda n: stats[n]["test"]["macro_f1"]["mean"])
    assert best_val != best_test  # the construction: val and test disagree
    assert summary["chosen"] == best_val == "lr=0.001"
    assert summary["headline"] == "fusion" and "val" in summary["chosen_on"]


def test_a_point_not_completed_is_left_out_and_said(fake_sweep):
    cfg, sweep = fake_sweep
    point = expand_points(cfg)[4]  # lr=0.01, seed 1
    sweep.point(point, cfg.models).status_path.unlink()
    assert main(["sweep", "report", str(sweep.root)]) == 0
    setting = next(s for s in json.loads(sweep.report_json.read_text())["settings"] if s["name"] == "lr=0.01")
    assert setting["seeds"] == [0, 2] and setting["missing"] == [1]
    assert "missing [1]" in sweep.report_markdown.read_text()


def test_hparams_read_back_with_event_accumulator(fake_sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    cfg, sweep = fake_sweep
    assert main(["sweep", "report", str(sweep.root)]) == 0
    main(["sweep", "report", str(sweep.root)])  # a second report rewrites the sessions, no duplicates
    sessions = sorted(p for p in sweep.report_tensorboard.glob("*/seed*") if p.is_dir())
    assert len(sessions) == 6
    point_dir = sweep.root / "points" / "lr=0.01" / "seed2"
    want = json.loads((point_dir / "fusion" / "fusion.json").read_text())["test"]["fusion: stacking"]["macro_f1"]
    acc = EventAccumulator(str(sweep.report_tensorboard / "lr=0.01" / "seed2"))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["setting"].string_value == "lr=0.01"
    assert start.hparams["seed"].number_value == 2
    assert start.hparams["train.lr"].number_value == pytest.approx(0.01)
    scalars = acc.Scalars("test/fusion/macro_f1")
    assert len(scalars) == 1 and scalars[0].value == pytest.approx(want, abs=1e-6)
    assert {"val/audio_text/ece", "val/video_text/accuracy", "test/fusion/weighted_f1"} <= set(acc.Tags()["scalars"])


def test_stat_of_one_seed_has_no_spread():
    assert Stat.of([0.5]) == Stat(0.5, 0.0, (0.5, 0.5), [0.5])


def test_the_demo_multi_seed_variant_is_the_demo_as_a_sweep(tmp_path):
    from emotrain.recipes.demo import DemoConfig
    from emotrain.sweep.demo import demo_sweep

    demo = load_config(DemoConfig, "demo/demo", ['model_overrides={"audio_text": ["train.lr=1e-3"]}',
                                                 'train_overrides=["train.total_samples=64"]'])
    cfg = demo_sweep(demo, tmp_path / "shards", None, 3)
    assert cfg.seeds == [0, 1, 2] and cfg.processes == demo.processes and cfg.name == "demo"
    assert (cfg.pair.audio_text, cfg.pair.video_text, cfg.pair.fusion) == (
        demo.train_configs["audio_text"], demo.train_configs["video_text"], demo.fusion)
    point = expand_points(cfg)[2]
    assert model_overrides(cfg, point, "audio_text") == [
        f"data.shards={tmp_path / 'shards'}", "train.total_samples=64", "train.lr=1e-3", "train.seed=2"]
    assert model_overrides(cfg, point, "video_text") == [
        f"data.shards={tmp_path / 'shards'}", "train.total_samples=64", "train.seed=2"]
