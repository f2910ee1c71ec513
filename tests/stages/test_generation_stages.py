"""The pure parts of the generating stages: prompts in, records out, no model."""

from dataclasses import replace

import pytest

from fspo_data.core.chat import Completion
from fspo_data.core.config import JobConfig, SamplingConfig
from fspo_data.core.records import Question
from fspo_data.domains import load_domain
from fspo_data.personas.taxonomy import load_taxonomy, sample_traits
from fspo_data.stages import personas, questions, responses
from fspo_data.stages.base import ShardSpec, StageContext
from tests.conftest import ScriptedBackend, echo_text, tables

# One roleplay question, for the stages that read questions.
QUESTION = Question(
    question_uuid="q0",
    domain="roleplay",
    index=0,
    question="Best tea?",
    selected_trait="interest",
    trait_varied="cooking",
    question_type="r",
)


def test_traits_are_seeded_and_cover_every_attribute():
    taxonomy = load_taxonomy(load_domain("roleplay"))
    traits = sample_traits(taxonomy, seed=3, index=5)
    assert traits == sample_traits(taxonomy, seed=3, index=5)
    assert [t.name for t in traits] == list(taxonomy.attributes)
    assert all(t.value in taxonomy.attributes[t.name] for t in traits)
    draws = {sample_traits(taxonomy, seed=3, index=i)[0].value for i in range(200)}
    assert len(draws) == len(taxonomy.attributes["age_band"])


def test_persona_prompt_lists_traits_and_parse_rejects_short_text():
    traits = sample_traits(load_taxonomy(load_domain("roleplay")), 0, 0)
    request = personas.persona_request(traits, SamplingConfig(), seed=1)
    assert all(t.value in request.messages[-1].content for t in traits)
    assert personas.parse_description("Too short.") is None
    assert personas.parse_description("  A retired farmer\n who loves  jazz and hates noise. ") == (
        "A retired farmer who loves jazz and hates noise."
    )


def test_question_parse_and_topic_cycle():
    assert questions.parse_question('1. "Which board game suits a family of five?"\nextra') == (
        "Which board game suits a family of five?"
    )
    assert questions.parse_question("ok") is None
    topics = {questions.question_topic(load_domain("roleplay"), i) for i in range(16)}
    assert len(topics) == 16


def test_parse_views_dedups_and_tops_up():
    views, fallback = responses.parse_views("1. A chef\n2. a chef\n- A student on a budget\n", 3)
    assert views[:2] == ["A chef", "A student on a budget"]
    assert len(views) == 3 and fallback == 1


def test_answers_questions_and_headers_are_no_views():
    # What the embedded model wrote instead of views in the demo and three_domains runs.
    listing = (
        "Here are three viewpoints:\nThe answer to this question would be: 3\n"
        'A possible answer: "No, there is no best answer\nClarify\n'
        "Is there a question better suited to an AI assistant?\n2. A retired football coach\n"
    )
    views, fallback = responses.parse_views(listing, 3)
    assert views[0] == "A retired football coach" and fallback == 2
    assert views[1:] == list(responses.FALLBACK_VIEWS[:2])


def test_short_contradicting_and_duplicate_descriptions_are_regenerated(tmp_path):
    config = JobConfig(run_dir=tmp_path, counts={"users": 4})
    taxonomy = load_taxonomy(load_domain("roleplay"))
    traits = [sample_traits(taxonomy, config.seed, i) for i in range(4)]
    gender = next(t.value for t in traits[3] if t.name == "gender")
    other_gender = next(v for v in taxonomy.attributes["gender"] if v != gender)
    answers = {
        0: ["too short", "A retired farmer who keeps bees and loves quiet evenings."],
        1: ["A keen gardener who grows tomatoes and reads history books."],
        2: [
            "A keen gardener who grows tomatoes and reads history books.",  # duplicates user 1
            "An early riser who cycles to work and collects old maps.",
        ],
        3: [f"Clearly a {other_gender}, who likes long walks and strong coffee."] * 3,
    }
    asked: dict[int, int] = {}

    def script(request):
        prompt = request.messages[-1].content
        user = next(i for i in range(4) if personas.describe_traits(traits[i]) in prompt)
        attempt = asked.get(user, 0)
        asked[user] = attempt + 1
        return replace(echo_text(request), text=answers[user][attempt])

    spec = ShardSpec(stage="personas", domain="roleplay", index=0, start=0, stop=4)
    output = personas.run(spec, {}, StageContext(config=config, backend=ScriptedBackend(script)))
    assert sorted(p.index for p in output.records) == [0, 1, 2]
    assert asked == {0: 2, 1: 1, 2: 2, 3: 3}  # user 3 fails all max_attempts=3 tries
    assert output.counters["personas_rejected_short"] == 1
    assert output.counters["personas_rejected_duplicate_exact"] == 1
    assert output.counters["personas_rejected_contradicts_traits"] == 3
    assert output.counters["personas_dropped_after_attempts"] == 1
    assert len({p.persona_description for p in output.records}) == 3


def test_templated_domains_describe_users_without_the_model(tmp_path):
    config = JobConfig(run_dir=tmp_path, domains=["review"], counts={"users": 3})
    spec = ShardSpec(stage="personas", domain="review", index=0, start=0, stop=3)
    output = personas.run(spec, {}, StageContext(config=config))
    assert len(output.records) == 3
    assert all(p.persona_description.startswith("This user prefers") for p in output.records)


def test_responses_shard_writes_one_candidate_per_view(tmp_path):
    config = JobConfig(run_dir=tmp_path, counts={"candidates_per_question": 2})
    spec = ShardSpec(stage="responses", domain="roleplay", index=0, start=0, stop=1)
    context = StageContext(config=config, backend=ScriptedBackend(echo_text))
    output = responses.run(spec, tables(questions=[QUESTION]), context)
    assert len(output.records) == 2
    assert len({r.view for r in output.records}) == 2
    assert len({r.response_uuid for r in output.records}) == 2


def test_question_parse_unwraps_what_small_models_write():
    assert questions.parse_question('A person might ask, "What makes jazz special to you?') == (
        "What makes jazz special to you?"
    )
    assert questions.parse_question("Sure! Here it is: Which hiking boots suit wet trails?") == (
        "Which hiking boots suit wet trails?"
    )
    assert questions.parse_question("I'm glad you asked. No question here.") is None


def test_stratified_attributes_meet_their_quotas_exactly():
    taxonomy = load_taxonomy(load_domain("roleplay"))
    total = 50
    drawn = [
        sample_traits(taxonomy, 0, i, stratify=("gender", "region"), total=total)
        for i in range(total)
    ]
    gender = [next(t.value for t in traits if t.name == "gender") for traits in drawn]
    # weights woman 49, man 49, non-binary 2 (of 100) -> 24.5, 24.5, 1 -> 25, 24, 1 or 24, 25, 1
    counts = sorted(gender.count(v) for v in taxonomy.attributes["gender"])
    assert counts == [1, 24, 25]
    regions = [next(t.value for t in traits if t.name == "region") for traits in drawn]
    expected = {v: w * total for v, w in taxonomy.attributes["region"].items()}
    assert all(abs(regions.count(v) - expected[v]) < 1 for v in expected)
    again = sample_traits(taxonomy, 0, 7, stratify=("gender", "region"), total=total)
    assert again == drawn[7]


def test_questions_that_come_back_as_answers_are_asked_again(tmp_path):
    config = JobConfig(run_dir=tmp_path, counts={"questions": 2})
    replies = iter(
        [
            "Sure, here is my advice.",
            "Which tea suits a cold morning?",
            "Which board game suits six players?",
        ]
    )
    backend = ScriptedBackend(lambda r: Completion(text=next(replies)))
    spec = ShardSpec(stage="questions", domain="roleplay", index=0, start=0, stop=2)
    output = questions.run(spec, {}, StageContext(config=config, backend=backend))
    assert [q.question for q in output.records] == [
        "Which board game suits six players?",
        "Which tea suits a cold morning?",
    ]
    assert output.counters["questions_regenerated"] == 1
    assert backend.requests[2].seed != backend.requests[0].seed


@pytest.mark.parametrize(
    "text",
    [
        # Written by the embedded model in the demo run (runs/demo, 2026-11-29).
        "Is there a question asking the best?",
        "Is there a question better suited to an AI assistant?",
        "Would you like me to suggest a classical music presentation that holds a special place?",
        "Are you looking for a mystery, a puzzle, a metaphor, or a metaphor about board games?",
        "What is the answer to this?",
    ],
)
def test_questions_no_user_would_ask_are_refused(text: str) -> None:
    assert questions.parse_question(text) is None
    # A user's question later in the same text is still found.
    assert questions.parse_question(f"{text} Which tent suits a rainy weekend?") == (
        "Which tent suits a rainy weekend?"
    )


def test_users_questions_pass() -> None:
    for text in ("How to cook a perfect vegan meal?", "What's a game that never changes?"):
        assert questions.parse_question(text) == text
