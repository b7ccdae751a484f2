from dataclasses import dataclass, field

import pytest

from emotrain.config import ConfigError, apply_overrides, from_dict, load_config, to_dict


@dataclass
class Optim:
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])

    def validate(self) -> None:
        if self.lr <= 0:
            raise ValueError("lr must be positive")


@dataclass
class Run:
    name: str
    steps: int = 10
    bf16: bool = True
    mode: str | None = None
    optim: Optim = field(default_factory=Optim)


def test_nested_build_and_roundtrip():
    run = from_dict(Run, {"name": "a", "optim": {"lr": 2}})
    assert run.optim.lr == 2.0 and isinstance(run.optim.lr, float)
    assert to_dict(run) == {"name": "a", "steps": 10, "bf16": True, "mode": None, "optim": {"lr": 2.0, "betas": [0.9, 0.999]}}


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"optim\.lrr"):
        from_dict(Run, {"name": "a", "optim": {"lrr": 1}})


@pytest.mark.parametrize(
    "data, pattern",
    [
        ({"name": "a", "steps": "8"}, r"steps: expected an integer"),
        ({"name": "a", "steps": True}, r"steps: expected an integer"),
        ({"name": "a", "bf16": "yes"}, r"bf16: expected true or false"),
        ({"name": 3}, r"name: expected a string"),
        ({"name": "a", "optim": {"betas": 0.9}}, r"optim.betas: expected a list"),
        ({}, r"missing required key\(s\) name"),
        ({"name": "a", "optim": {"lr": -1}}, r"optim: lr must be positive"),
    ],
)
def test_bad_values_are_clear(data, pattern):
    with pytest.raises(ConfigError, match=pattern):
        from_dict(Run, data)


def test_dotted_overrides_and_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("name: base\noptim:\n  lr: 0.1\n")
    run = load_config(Run, path, ["optim.lr=3e-4", "steps=7", "mode=fast", "optim.betas=[0.8, 0.9]"])
    assert (run.optim.lr, run.steps, run.mode, run.optim.betas) == (3e-4, 7, "fast", [0.8, 0.9])
    with pytest.raises(ConfigError, match="not of the form"):
        apply_overrides({}, ["steps"])
    with pytest.raises(ConfigError, match="steps is not a section"):
        apply_overrides({"steps": 3}, ["steps.x=1"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Run, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Run, bad)
