"""The search's pieces without training: the ``search:`` section's errors, the seeded sampler, the lease
that hands a dead worker's trial to another, and the confirmation over seeds choosing by mean val where
the best single trial is not the best mean (and test would choose yet another).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from emotrain.config import ConfigError, load_config
from emotrain.sweep.layout import SweepDir
from emotrain.sweep.spec import SweepConfig
from emotrain.sweep.summary import METRICS

SPACE = {"train.lr": {"log_uniform": [1e-5, 1e-2]}, "train.weight_decay": {"float": [0.0, 0.1]},
         "train.warmup_samples": {"int": [0, 64]}, "data.shuffle_buffer": {"choice": [16, 32]}}


def config(tmp_path: Path, search: dict | None = None, **top) -> SweepConfig:
    file = tmp_path / "s.yaml"
    file.write_text(yaml.safe_dump({"train_config": "demo/video_text", "seeds": [0], "name": "s",
                                    "search": {"space": SPACE, "n_trials": 4, **(search or {})}, **top}))
    return load_config(SweepConfig, file)


@pytest.mark.parametrize("search, top, message", [
    ({"space": {"train.lr": {"uniform": [0, 1]}}}, {}, "expected one of"),
    ({"space": {"train.lr": {"float": [1.0, 0.5]}}}, {}, "low must be below high"),
    ({"space": {"train.lr": {"log_uniform": [0.0, 0.5]}}}, {}, "low must be > 0"),
    ({"space": {"train.warmup_samples": {"int": [0.5, 4]}}}, {}, "integers"),
    ({"space": {"lr": {"float": [0.1, 0.5]}}}, {}, "dotted config keys"),
    ({"objective": {"metric": "nll", "direction": "maximize"}}, {}, "nll is to minimize"),
    ({"objective": {"metric": "test_macro_f1"}}, {}, "test is never searched on"),
    ({"objective": {"metric": "weighted_f1"}}, {}, "pruner"),
    ({"sampler": {"name": "grid"}}, {}, "not one of"),
    ({"pruner": {"patience": 3}}, {}, "unknown key(s) search.pruner.patience"),
    ({}, {"grid": {"train.lr": [0.1]}}, "not both"),
])
def test_search_section_errors_are_one_clear_line(tmp_path, search, top, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config(tmp_path, search, **top)


def claim_and_finish(cfg: SweepConfig, root: Path, n: int) -> list[dict]:
    from emotrain.sweep.study import Lease, claim_next, open_study

    sweep, params = SweepDir(root), []
    study = open_study(cfg, sweep)
    for _ in range(n):
        claim = claim_next(study, cfg, sweep, Lease.mine())
        assert not claim.resumed
        study.tell(claim.number, float(claim.number))
        params.append(claim.params)
    return params


def test_the_same_seed_proposes_the_same_first_trials(tmp_path):
    cfg = config(tmp_path, {"sampler": {"seed": 7, "n_startup_trials": 2}})
    first, second = claim_and_finish(cfg, tmp_path / "a", 4), claim_and_finish(cfg, tmp_path / "b", 4)
    assert first == second  # random start-up trials and the TPE proposals after them
    assert len({json.dumps(p, sort_keys=True) for p in first}) == 4  # each proposal its own draw
    assert set(first[0]) == set(SPACE) and first[0]["data.shuffle_buffer"] in (16, 32)
    assert isinstance(first[0]["train.warmup_samples"], int) and 1e-5 <= first[0]["train.lr"] <= 1e-2
    other = config(tmp_path, {"sampler": {"seed": 8, "n_startup_trials": 2}})
    assert claim_and_finish(other, tmp_path / "c", 1) != first[:1]


def test_a_dead_workers_trial_is_resumed_and_a_live_ones_waited_for(tmp_path):
    from emotrain.sweep.study import LEASE_FILE, WAIT, Lease, claim_next, open_study, read_lease, trial_dir

    cfg = config(tmp_path, {"n_trials": 2, "lease_s": 5})
    sweep = SweepDir(tmp_path / "sw")
    study = open_study(cfg, sweep)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    worker = Lease.mine()
    other = Lease(worker.host, dead.pid, None, time.time())
    a = claim_next(study, cfg, sweep, other)  # a worker that has since died: its pid is gone
    assert (a.number, a.resumed) == (0, False)
    # Trial 0 is RUNNING under a lease whose process is gone: taken over and resumed, not asked again.
    resumed = claim_next(study, cfg, sweep, worker)
    assert (resumed.number, resumed.resumed, resumed.params) == (0, True, a.params)
    assert read_lease(trial_dir(cfg, sweep, 0, a.params)).pid == os.getpid()
    b = claim_next(study, cfg, sweep, Lease("elsewhere", 1, None, time.time()))  # trial 0 is ours, alive
    assert (b.number, b.resumed) == (1, False)
    # A live worker of another host that renewed its lease just now: wait for it; once it expires: resume.
    alive = Lease("elsewhere", 1, None, time.time())
    for n in (0, 1):
        path = trial_dir(cfg, sweep, n, {}).root / LEASE_FILE
        path.write_text(json.dumps(alive.__dict__))
    assert claim_next(study, cfg, sweep, Lease("third", 2, None, 0.0)) == WAIT
    old = {**alive.__dict__, "renewed": time.time() - 10}
    (trial_dir(cfg, sweep, 1, {}).root / LEASE_FILE).write_text(json.dumps(old))
    late = claim_next(study, cfg, sweep, Lease("third", 2, None, 0.0))
    assert (late.number, late.resumed) == (1, True)
    study.tell(0, 1.0)
    study.tell(1, 2.0)
    assert claim_next(study, cfg, sweep, worker) is None  # n_trials finished: nothing more, ever
    assert len(study.trials) == 2


def write_point(pdir, val: float, test: float) -> None:
    for split, value in (("val", val), ("test", test)):
        report = pdir.run("run").eval_report(split)
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps({"splits": {split: {m: value for m in METRICS} | {"nll": 1.0}}}))
    pdir.root.joinpath("point.json").write_text(json.dumps({"status": "completed", "wall_s": 1.0}))


def test_confirmation_chooses_by_mean_val_over_seeds_not_the_best_single_trial(tmp_path):
    """trial 0 is the best single trial (seed 0) but falls on the other seeds; trial 1 is steady and has the
    best mean; trial 2 would win on test. The choice is trial 1; test is reported, never used."""
    from emotrain.sweep.search_report import summarise_search, write_search_report
    from emotrain.sweep.search_runner import confirm_config, confirm_dir
    from emotrain.sweep.spec import Point, Setting
    from emotrain.sweep.study import Lease, claim_next, open_study, trial_dir

    cfg = config(tmp_path, {"n_trials": 4, "objective": {"metric": "macro_f1"},
                            "confirm": {"top_k": 3, "seeds": [1, 2]}})
    sweep = SweepDir(tmp_path / "sw")
    sweep.write_config(cfg)
    study = open_study(cfg, sweep)
    # (val on seeds 0, 1, 2; test on every seed) per trial; trial 3 is the worst and is not confirmed.
    plan = {0: ((0.90, 0.40, 0.45), 0.50), 1: ((0.80, 0.78, 0.79), 0.55), 2: ((0.70, 0.70, 0.71), 0.90),
            3: ((0.10,), 0.10)}
    claims = {}
    for number, (vals, test) in plan.items():
        claim = claims[number] = claim_next(study, cfg, sweep, Lease.mine())
        write_point(trial_dir(cfg, sweep, number, claim.params), vals[0], test)
        study.tell(number, vals[0])
    confirm = confirm_config(cfg, study)
    assert [s.name for s in confirm.settings] == ["trial-0000", "trial-0001", "trial-0002"]
    assert confirm.seeds == [0, 1, 2] and confirm.search is None
    cdir = confirm_dir(sweep)
    cdir.write_config(confirm)
    for number in (0, 1, 2):
        for seed in (1, 2):
            point = Point(Setting(f"trial-{number:04d}", claims[number].params), seed)
            write_point(cdir.point(point, cfg.models), plan[number][0][seed], plan[number][1])
    summary = summarise_search(cfg, sweep)
    assert summary.best_trial == "trial-0000"
    assert summary.chosen == "trial-0001"
    rows = {c.setting: c for c in summary.confirm}
    assert rows["trial-0001"].val_objective.mean == pytest.approx(0.79)
    assert rows["trial-0002"].test["macro_f1"].mean == pytest.approx(0.90)  # best on test, not chosen
    assert rows["trial-0000"].seeds == [0, 1, 2]
    _, written = write_search_report(cfg, sweep)
    markdown = (sweep.report_dir / "search.md").read_text()
    assert "Chosen: **trial-0001**" in markdown and "| **trial-0001** (chosen) | [0, 1, 2] | 0.7900 +/- 0.0100 |" in markdown
    assert json.loads(sweep.report_json.read_text())["chosen"] == "trial-0001"  # the confirmation sweep agrees


def test_the_validation_hook_is_named_by_the_environment_and_only_emotrain_modules(tmp_path, monkeypatch):
    from emotrain.errors import UserError
    from emotrain.training.hooks import HOOK_ENV, validation_hook

    monkeypatch.delenv(HOOK_ENV, raising=False)
    assert validation_hook(tmp_path) is None
    monkeypatch.setenv(HOOK_ENV, "os:system")
    with pytest.raises(UserError, match="expected emotrain.<module>:<function>"):
        validation_hook(tmp_path)
    monkeypatch.setenv(HOOK_ENV, "emotrain.sweep.pruning:trial_hook")
    assert validation_hook(tmp_path / "run") is None  # not a trial's run: no trial.json beside it
