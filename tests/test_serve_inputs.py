"""``polycam-explorer serve`` with bad image arguments: refused before Voila starts, naming the
argument and what is accepted (a folder was 'does not exist'; a file that is not an image got a
served page whose sweep failed)."""
from __future__ import annotations

import subprocess

import pytest

from polycam_explorer import cli, serve


@pytest.fixture
def no_voila(monkeypatch):
    """Fail the test if serve gets as far as starting Voila."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"Voila was started: {args}")
    monkeypatch.setattr(subprocess, "Popen", refuse)


def test_a_folder_given_as_an_image_is_named_as_a_folder(tmp_path, no_voila, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    assert cli.main(["serve", str(folder), "--no-browser"]) == 2
    err = capsys.readouterr().err
    assert repr(str(folder)) in err and "is a folder" in err and "does not exist" not in err


def test_a_file_that_is_not_an_image_is_refused_before_serving(tmp_path, no_voila, capsys, sample):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    assert cli.main(["serve", str(sample("chelsea")), str(notes), "--no-browser"]) == 2
    err = capsys.readouterr().err
    assert repr(str(notes)) in err and "as an image" in err and "PNG" in err  # the formats accepted


def test_a_missing_image_is_still_said_to_be_missing(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        serve.app_notebook([str(tmp_path / "gone.jpg")], tmp_path)
