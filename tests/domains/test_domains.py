"""Domains as folders of data: lookup (domains_dir first, then the built-ins), template
resolution (the domain's own prompts/, then the package's), shots, and the config checks
that need the domain files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fspo_data.core.config import CountsConfig, JobConfig
from fspo_data.core.config_files import ConfigError
from fspo_data.domains import (
    BUILT_IN_DIR,
    DomainError,
    available_domains,
    load_domain,
)
from fspo_data.personas.taxonomy import load_taxonomy
from fspo_data.pipeline.resume import stage_prompts
from fspo_data.pipeline.validate import job_problems, load_job
from fspo_data.prompts import PROMPT_DIR, file_hash
from fspo_data.stages import STAGES_BY_NAME
from tests.conftest import TESTS_DIR

EXAMPLE = TESTS_DIR / "data" / "domains" / "poetry"  # the README's example domain


@pytest.fixture
def domains_dir(tmp_path: Path) -> Path:
    """A domains_dir outside the package holding the example domain `poetry`."""
    shutil.copytree(EXAMPLE, tmp_path / "domains" / "poetry")
    return tmp_path / "domains"


def test_built_in_domains_are_the_folders_of_the_package() -> None:
    assert available_domains() == ["elix", "review", "roleplay"]
    elix = load_domain("elix")
    assert elix.folder == BUILT_IN_DIR / "elix" and elix.default_shots == 4
    assert "education_level" in load_taxonomy(elix).attributes


def test_shots_come_from_the_config_else_the_domain_default() -> None:
    elix, review = load_domain("elix"), load_domain("review")
    counts = CountsConfig(shots={"elix": 2})
    assert (elix.shots(counts), review.shots(counts)) == (2, 8)
    assert elix.shots(CountsConfig()) == 4


def test_a_template_resolves_in_the_domain_folder_then_the_package() -> None:
    roleplay = load_domain("roleplay")
    own = roleplay.template_path(roleplay.questions.prompt)
    assert own == BUILT_IN_DIR / "roleplay" / "prompts" / "question_roleplay.txt"
    assert roleplay.template_path(roleplay.responses.prompt) == PROMPT_DIR / "response_view.txt"


def test_a_domain_of_domains_dir_renders_its_own_templates(domains_dir: Path) -> None:
    poetry = load_domain("poetry", domains_dir)
    assert available_domains(domains_dir) == ["elix", "poetry", "review", "roleplay"]
    assert poetry.default_shots == 2
    assert load_taxonomy(poetry).attributes["poem_style"]["haiku"] == pytest.approx(1 / 3)
    (system, user) = poetry.render("response_poetry", view="haiku", question="The sea?")
    assert system.content == "You are a poet who writes only haiku poems, at most four lines long."
    assert user.content == "The sea?"
    # What a manifest records: a domain's own templates as `domain/name`, the package's by name.
    config = JobConfig(run_dir="x", domains=["poetry", "elix"], domains_dir=domains_dir)
    hashes = stage_prompts(STAGES_BY_NAME["responses"], config)
    assert hashes["poetry/response_poetry"] == file_hash(
        domains_dir / "poetry" / "prompts" / "response_poetry.txt"
    )
    assert "elix/response_elix" in hashes
    judge = stage_prompts(STAGES_BY_NAME["judge"], config)
    assert judge["judge"] == file_hash(PROMPT_DIR / "judge.txt")


def test_an_own_template_shadows_the_package_one_of_the_same_name(domains_dir: Path) -> None:
    poetry = domains_dir / "poetry"
    (poetry / "prompts" / "response_poetry.txt").rename(poetry / "prompts" / "response_view.txt")
    spec = poetry / "domain.yaml"
    spec.write_text(spec.read_text().replace("prompt: response_poetry", "prompt: response_view"))
    domain = load_domain("poetry", domains_dir)
    assert domain.template_path("response_view") == poetry / "prompts" / "response_view.txt"
    assert "poet" in domain.render("response_view", view="haiku", question="q")[0].content


def test_a_folder_of_domains_dir_replaces_the_built_in_domain_of_its_name(
    domains_dir: Path,
) -> None:
    shutil.copytree(domains_dir / "poetry", domains_dir / "review")
    assert load_domain("review", domains_dir).folder == domains_dir / "review"
    assert load_domain("review", domains_dir).responses.views == ["rhyming", "free verse", "haiku"]
    assert load_domain("review").folder == BUILT_IN_DIR / "review"


def test_an_unknown_domain_names_the_known_ones(domains_dir: Path) -> None:
    with pytest.raises(DomainError, match=r"unknown domain 'sonnets' \(known: elix, poetry, "):
        load_domain("sonnets", domains_dir)
    with pytest.raises(DomainError, match="unknown domain '../review'"):
        load_domain("../review", domains_dir / "poetry")


@pytest.mark.parametrize(
    ("break_it", "expected"),
    [
        (lambda d: (d / "taxonomy.yaml").unlink(), "domain.yaml: no taxonomy.yaml beside it"),
        (
            lambda d: (d / "prompts" / "question_poetry.txt").unlink(),
            "domain.yaml: questions.prompt: no question_poetry.txt in ",
        ),
        (
            lambda d: (d / "domain.yaml").write_text("name: x\n"),
            "domain.yaml: default_shots: Field required (+5 more)",
        ),
        (
            lambda d: (d / "domain.yaml").write_text(
                (EXAMPLE / "domain.yaml")
                .read_text()
                .replace("default_shots: 2", "default_shots: 0")
            ),
            "domain.yaml: default_shots: Input should be greater than 0",
        ),
    ],
    ids=["no_taxonomy", "no_template", "unknown_field", "zero_shots"],
)
def test_a_broken_domain_is_one_line_naming_its_file(domains_dir, break_it, expected) -> None:
    break_it(domains_dir / "poetry")
    with pytest.raises(ValueError) as info:
        load_domain("poetry", domains_dir)
    assert str(info.value).startswith(str(domains_dir / "poetry"))
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_a_broken_taxonomy_is_a_problem_of_the_job(domains_dir: Path) -> None:
    (domains_dir / "poetry" / "taxonomy.yaml").write_text("attributes: {style: {values: {}}}\n")
    config = JobConfig(run_dir="r", domains=["poetry"], domains_dir=domains_dir)
    (problem,) = job_problems(config)
    assert problem.startswith("domains.0: ")
    assert "taxonomy.yaml: attributes.style.values: Dictionary should have at least 1" in problem


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "run_dir: r\ncounts: {shots: {roleplay: 9}, pairs_per_user: 5}\n",
            "counts.shots.roleplay + 1 (10) exceeds counts.pairs_per_user (5)",
        ),
        (
            "run_dir: r\ndomains: [poetry]\ncounts: {pairs_per_user: 2}\n",
            "counts.shots.poetry + 1 (3) exceeds counts.pairs_per_user (2)",
        ),
        (
            "run_dir: r\ndomains: [review, poetry]\ncounts: {shots: {elix: 2}}\n",
            "counts.shots.elix: 'elix' is not in domains (review, poetry)",
        ),
        (
            "run_dir: r\ndomains: [poetry]\npersonas: {stratify: [gender]}\n",
            "personas.stratify: 'gender' is in no taxonomy of poetry (attributes: poem_style)",
        ),
    ],
    ids=["builtin_shots", "default_shots", "shots_domain_not_in_job", "stratify"],
)
def test_the_job_checks_shots_and_traits_against_the_domain_files(
    domains_dir: Path, text: str, expected: str
) -> None:
    path = domains_dir.parent / "job.yaml"
    path.write_text(f"domains_dir: {domains_dir}\n{text}")
    with pytest.raises(ConfigError) as info:
        load_job(path)
    assert str(info.value) == f"{path}: {expected}"


def test_a_job_of_a_custom_domain_is_sound(domains_dir: Path) -> None:
    config = JobConfig(
        run_dir="r",
        domains=["poetry", "elix"],
        domains_dir=domains_dir,
        counts={"shots": {"elix": 3}},
        personas={"stratify": ["poem_style"]},
    )
    assert job_problems(config) == []
