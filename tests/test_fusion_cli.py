import json
import shutil

from emotrain.cli import main
from emotrain.evaluation.predictions import save_classes
from helpers import make_runs

FAST = ["--set", "stacking.folds=3", "--set", "stacking.l2=[0.01]", "--set", "gating.folds=3",
        "--set", "gating.epochs=[20]", "--set", "gating.weight_decay=[0.0]", "--set", "metrics.bootstrap_resamples=100"]


def test_fuse_end_to_end(tmp_path, capsys):
    run_a, run_b = make_runs(tmp_path, n_val=300, n_test=300)
    out = tmp_path / "reports" / "demo"
    rc = main(["fuse", "--audio", str(run_a), "--video", str(run_b), "--out", str(out),
               "--tensorboard", str(tmp_path / "tb"), *FAST])
    assert rc == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "fusion.json").read_text())
    rows = summary["test"]
    assert list(rows)[:4] == ["audio (raw)", "audio (calibrated)", "video (raw)", "video (calibrated)"]
    assert len(rows) == 4 + 6 and f"**fusion: {summary['chosen']}**" in printed
    assert summary["counts"]["test"] == {"both": 300, "only_audio": 0, "only_video": 0, "unlabelled": 0}
    assert summary["params"]["audio"]["temperature"] > 1 > summary["params"]["video"]["temperature"]
    assert summary["config"]["stacking"]["l2"] == [0.01]
    table = (out / "fusion.md").read_text()
    assert table in printed + "\n" and table.count("\n| ") == 1 + len(rows)
    for name in ("fusion.png", "test_confusion.png", "test_per_class.png", "test_reliability.png", "report.json"):
        assert (out / name).stat().st_size > 0
    assert any((tmp_path / "tb").iterdir())


def fuse_error(capsys, *args):
    rc = main(["fuse", *args, *FAST])
    err = capsys.readouterr().err.strip()
    return rc, err


def test_bad_inputs_give_one_line_and_exit_2(tmp_path, capsys):
    run_a, run_b = make_runs(tmp_path, n_val=40, n_test=20)
    rc, err = fuse_error(capsys, "--audio", str(tmp_path / "nope"), "--video", str(run_b))
    assert rc == 2 and err.count("\n") == 0 and "run directory not found" in err

    (run_b / "predictions" / "test.npz").unlink()
    rc, err = fuse_error(capsys, "--audio", str(run_a), "--video", str(run_b))
    assert rc == 2 and err.count("\n") == 0 and "test.npz" in err

    shutil.copy(run_a / "predictions" / "test.npz", run_b / "predictions" / "test.npz")
    save_classes(run_b / "predictions", ["x", "y", "z", "w", "v", "u", "t"])
    rc, err = fuse_error(capsys, "--audio", str(run_a), "--video", str(run_b))
    assert rc == 2 and err.count("\n") == 0 and "different classes" in err

    save_classes(run_b / "predictions", ["x", "y"])
    rc, err = fuse_error(capsys, "--audio", str(run_a), "--video", str(run_b))
    assert rc == 2 and err.count("\n") == 0 and "7 logit columns but 2 classes" in err

    rc, err = fuse_error(capsys, "--audio", str(run_a), "--video", str(run_a), "--set", "strategies=[mean, magic]")
    assert rc == 2 and err.count("\n") == 0 and "magic" in err
