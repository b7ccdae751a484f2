"""Quiet by default, everything with --verbose: the filters are narrow and the switch reaches children."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

from emotrain import console
from emotrain.cli import main as cli_main


@pytest.fixture
def clean_filters(monkeypatch):
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    with warnings.catch_warnings():
        warnings.resetwarnings()
        yield


def test_only_the_known_warning_is_filtered(clean_filters):
    console.quiet_libraries()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # what the user's own environment might do: filters above still win
        console.quiet_libraries()
        warnings.warn("`torch.distributed.all_gather_into_tensor` is deprecated. Use x.", FutureWarning)
        warnings.warn("something else is deprecated", FutureWarning)
    assert [str(w.message) for w in caught] == ["something else is deprecated"]


def test_library_prints_are_swallowed_unless_verbose(clean_filters, monkeypatch, capsys):
    with console.library_output():
        print("Processing zero checkpoint 'x'")
        print("to stderr", file=sys.stderr)
    assert capsys.readouterr() == ("", "")
    monkeypatch.setenv(console.VERBOSE_ENV, "1")
    with console.library_output():
        print("Processing zero checkpoint 'x'")
    assert "Processing zero checkpoint" in capsys.readouterr().out


def test_library_output_lets_exceptions_through(clean_filters):
    with pytest.raises(ValueError, match="boom"), console.library_output():
        raise ValueError("boom")


def test_verbose_flag_is_inherited_by_child_processes(clean_filters, monkeypatch):
    monkeypatch.setenv(console.VERBOSE_ENV, "0")  # so that teardown removes what --verbose sets
    assert not console.verbose()
    assert cli_main(["--verbose", "--help"]) == 0
    child = subprocess.run([sys.executable, "-c", "from emotrain import console; print(console.verbose())"],
                           capture_output=True, text=True, check=True)
    assert child.stdout.strip() == "True"
