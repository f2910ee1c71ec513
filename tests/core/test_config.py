import pytest

from fspo_data import cli
from fspo_data.core.config import ConfigError, JobConfig, load_config
from tests.conftest import TESTS_DIR

DEMO = TESTS_DIR.parent / "configs" / "demo.yaml"


def test_demo_and_tiny_configs_load():
    assert load_config(DEMO).counts.users > 0
    assert load_config(TESTS_DIR / "data" / "tiny.yaml").seed == 7


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("run_dir: r\ncounts: {users: -1}\n", "counts.users"),
        ("run_dir: r\ncounts: {users: many}\n", "counts.users"),
        ("run_dir: r\nbogus: 1\n", "bogus: unknown field"),
        ("run_dir: r\nmodel: {backend: tgi}\n", "model.backend"),
        ("run_dir: r\nstages: {judge: {mode: lenient}}\n", "stages.judge.mode"),
        ("counts: {users: 3}\n", "run_dir: Field required"),
        ("run_dir: r\ncounts: [1, 2\n", "not valid YAML at line"),
        ("- just a list\n", "(top level)"),
    ],
)
def test_bad_config_gives_one_line_naming_file_and_field(tmp_path, text, field):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert field in message


def test_cli_exits_2_without_traceback(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text("run_dir: r\ncounts: {users: 0}\n")
    assert cli.main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: counts.users:") and "Traceback" not in err
    assert cli.main(["run", str(tmp_path / "missing.yaml")]) == 2


def test_fingerprint_ignores_where_and_how_fast_but_not_what():
    base = JobConfig(run_dir="a")
    assert base.fingerprint() == JobConfig(run_dir="b", ray={"num_cpus": 2}).fingerprint()
    assert base.fingerprint() == JobConfig(run_dir="a", model={"replicas": 4}).fingerprint()
    assert base.fingerprint() == JobConfig(run_dir="a", report={"after_run": False}).fingerprint()
    assert base.fingerprint() != JobConfig(run_dir="a", seed=1).fingerprint()


def test_help_works_for_every_command(capsys):
    for argv in (["--help"], ["run", "--help"], ["status", "--help"]):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 0
    assert "resume" in capsys.readouterr().out
