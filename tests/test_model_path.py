"""`fspo-data model-path`: the folder `vllm serve` needs for the embedded weights."""

from pathlib import Path

import pytest

from fspo_data import cli


@pytest.mark.model
def test_the_embedded_model_path_is_a_hugging_face_folder(capsys):
    assert cli.main(["model-path"]) == 0
    folder = Path(capsys.readouterr().out.strip())
    assert (folder / "config.json").is_file()


def test_an_unknown_embedded_model_is_one_line_exit_2(capsys):
    assert cli.main(["model-path", "embedded:Nope"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and "unknown embedded model 'Nope'" in err
