import pytest

from fspo_data import cli
from fspo_data.core.config import JobConfig, load_config
from fspo_data.core.config_files import ConfigError
from fspo_data.stages import judge
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
        ("run_dir: r\nmodel: {simulate_truncation: true}\n", "model: simulate_truncation is for"),
        ("run_dir: r\nstages: {truncation: {retry_factor: 0.5}}\n", "stages.truncation"),
        ("run_dir: r\nepisodes: {repeats: 0}\n", "episodes.repeats"),
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


def test_pair_blocks_put_the_user_count_in_the_fingerprint_and_the_judges_recipe():
    def job(users: int, blocks: int) -> JobConfig:
        return JobConfig(run_dir="a", counts={"users": users, "pair_blocks": blocks})

    # One block is every run before blocks: a grown run keeps its fingerprint and judge shards.
    assert (
        job(12, 1).fingerprint() == job(24, 1).fingerprint() == JobConfig(run_dir="a").fingerprint()
    )
    assert judge.STAGE.settings(job(12, 1)) == judge.STAGE.settings(job(24, 1))
    # Blocks deal users to pool slices over all users: the count shapes every user's pairs.
    assert job(12, 2).fingerprint() != job(24, 2).fingerprint()
    assert judge.STAGE.settings(job(12, 2)) != judge.STAGE.settings(job(24, 2))


def test_help_works_for_every_command(capsys):
    for argv in (["--help"], ["run", "--help"], ["status", "--help"]):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 0
    assert "resume" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("run_dir: r\nseed: 1\nseed: 2\n", "seed: key given twice (lines 2 and 3)"),
        (
            "run_dir: r\nmodel:\n  dtype: float32\n  replicas: 1\n  dtype: bfloat16\n",
            "model.dtype: key given twice (lines 3 and 5)",
        ),
        (
            "run_dir: r\nstages: {rationales: {sampling: {max_tokens: 9, max_tokens: 8}}}\n",
            "stages.rationales.sampling.max_tokens: key given twice (lines 2 and 2)",
        ),
        # YAML 1.1 reads both as the boolean true: one key for the dict, so one too many here.
        ("run_dir: r\nyes: 1\ntrue: 2\n", "True: key given twice (lines 2 and 3)"),
    ],
)
def test_a_key_given_twice_is_refused_naming_it_and_its_lines(tmp_path, text, message):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: {message}"


def test_a_merge_key_may_be_overridden_and_python_tags_stay_refused(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("run_dir: r\ncounts: {<<: {users: 3, questions: 4}, users: 6}\n")
    counts = load_config(path).counts
    assert (counts.users, counts.questions) == (6, 4)
    path.write_text("run_dir: !!python/object/apply:os.system [ls]\n")
    with pytest.raises(ConfigError, match="not valid YAML at line 1"):
        load_config(path)


def test_the_train_config_refuses_a_key_given_twice(tmp_path):
    from fspo_data.train import load_train_config

    path = tmp_path / "train.yaml"
    path.write_text((TESTS_DIR.parent / "configs" / "train_cpu_smoke.yaml").read_text())
    path.write_text(path.read_text() + "model: embedded:Other\n")
    with pytest.raises(ConfigError, match=r"model: key given twice \(lines 3 and \d+\)"):
        load_train_config(path)


_MODELS = "run_dir: r\nmodels: {a: {backend: instant-benchmark-double}, b: {model: m}}\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (_MODELS + "roles: {default: a, judge: x}\n", "roles.judge: 'x' is not a model under"),
        (
            _MODELS + "roles: {default: a, candidates: [a, y]}\n",
            "roles.candidates.models.1: 'y' is not a model under `models:` (a, b)",
        ),
        (_MODELS + "roles: {default: a, candidates: [a, a]}\n", "roles.candidates.models"),
        (
            _MODELS + "roles: {default: a, candidates: {models: [a], assign: all}}\n",
            "roles.candidates.assign",
        ),
        (_MODELS + "model: {}\nroles: {default: a}\n", "model: give one `model:` (every role)"),
        (
            _MODELS + "roles: {personas: a, questions: a, views: a, candidates: [a, b]}\n",
            "roles.judge: no model serves it; name one of a, b (or set roles.default)",
        ),
        ("run_dir: r\nroles: {default: a}\n", "roles: needs `models:`"),
        ("run_dir: r\nmodels: {'a b': {}}\nroles: {default: 'a b'}\n", "models.a b: a name"),
    ],
)
def test_bad_models_or_roles_give_one_line_naming_the_field(tmp_path, text, message):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)


def test_one_model_is_shorthand_for_every_role():
    roster = JobConfig(run_dir="r", model={"backend": "instant-benchmark-double"}).roster()
    assert not roster.named
    assert set(roster.roles.values()) == {("instant-benchmark-double",)}
    named = JobConfig(
        run_dir="r",
        models={"gen": {}, "big": {"model": "m"}},
        roles={"default": "gen", "judge": "big", "candidates": {"models": ["gen", "big"]}},
    ).roster()
    assert named.roles["judge"] == ("big",) and named.roles["eval_judge"] == ("gen",)
    assert named.roles["candidates"] == ("gen", "big") and named.assign == "round_robin"
    assert named.roles["rationales"] == ("gen",)
