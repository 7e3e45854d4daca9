"""Answer extraction and scores, and the RAFT builder: determinism, oracle share, context, targets, and the
train/eval contract that ``extract_answer(completion) == answer`` for every example built."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path

import pytest

from ragloop.datasets.answers import (
    ABSTAIN_ANSWER,
    api_call_match,
    exact_match,
    extract_answer,
    normalise_answer,
    token_f1,
)
from ragloop.datasets.importers import read_api_docs, read_qa_file
from ragloop.datasets.qa import QAItem, QAPassage, passage_id
from ragloop.datasets.raft import RaftConfig, RaftExample, build_raft_examples, misled_answer, to_dpo_pair
from ragloop.errors import ConfigError, RagloopError
from ragloop.generation.prompts import get_template

FIXTURES = Path(__file__).parent / "fixtures" / "qa"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
QUOTE = re.compile(r"##begin_quote##(.*?)##end_quote## \[(\d+)\]")
ABSTAIN = extract_answer(ABSTAIN_ANSWER)


# --- extraction ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "answer_type", "expected"),
    [
        ("##begin_quote##It was in Tulsa.##end_quote## [2]\nAnswer: Tulsa", "span", "Tulsa"),
        ("Answer: Denver\nOn reflection...\nAnswer: Tulsa [1].", "span", "Tulsa"),  # the last marker wins
        ("The band first played in Tulsa [2].", "span", "The band first played in Tulsa"),
        ("blah blah\n<ANSWER>: Tulsa", "span", "Tulsa"),
        ('**Answer:** "Tulsa"', "span", "Tulsa"),
        ("Tulsa [1, 3]", "span", "Tulsa"),
        ("Yes.", "label", "yes"),
        ("The answer is maybe", "label", "maybe"),
        ("Answer: No, it is not [2].", "label", "no"),
        ("Yes, it seems so at first.\nAnswer: no", "label", "no"),
        ("##begin_quote##No effect was seen.##end_quote## [1] Overall, maybe.", "label", "maybe"),
        ("I cannot tell.", "label", ""),
        ("Answer: The documents do not say.", "label", ABSTAIN),
        ("The documents do not say.", "span", ABSTAIN),
        (
            "Answer: ```python\nmodel = torch.hub.load('a/b', 'c')\n```.",
            "api_call",
            "model = torch.hub.load('a/b', 'c')",
        ),
        ("Answer: f(x[1],  y) [2]", "api_call", "f(x[1], y)"),  # indexing is not a citation
    ],
)
def test_extract_answer(output, answer_type, expected):
    assert extract_answer(output, answer_type) == expected


def test_extract_answer_keeps_a_mid_sentence_answer_colon():
    assert extract_answer("Her reply was the answer: keep going") == "Her reply was the answer: keep going"


def test_normalize_exact_match_and_f1_follow_squad():
    assert normalise_answer("The  Cat, sat!") == "cat sat"
    assert exact_match("the Tulsa.", ["Tulsa"]) == 1.0
    assert exact_match("Denver", ["Tulsa", "Tulsa, Oklahoma"]) == 0.0
    assert exact_match("Tulsa, Oklahoma", "Tulsa") == 0.0  # EM is not containment
    assert token_f1("Tulsa, Oklahoma", ["Tulsa"]) == pytest.approx(2 / 3)
    assert token_f1("Tulsa", ["Denver", "Tulsa, Oklahoma"]) == pytest.approx(2 / 3)  # best gold
    assert token_f1("Denver", ["Tulsa"]) == 0.0
    assert token_f1("", ["Tulsa"]) == 0.0 and exact_match("", ["Tulsa"]) == 0.0
    assert token_f1("anything", []) == 0.0 and exact_match("anything", []) == 0.0
    assert exact_match(ABSTAIN, ["yes"]) == 0.0  # an abstention never scores as an answer


GOLD_CALL = "torch.hub.load(repo_or_dir='pytorch/vision', model='resnet18', pretrained=True)"


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        (GOLD_CALL, GOLD_CALL, True),
        ("model = torch.hub.load('pytorch/vision', 'resnet18', pretrained=True)", GOLD_CALL, True),
        (
            '```python\nm = torch.hub.load(model="resnet18", repo_or_dir="pytorch/vision", pretrained=True)\n```\nDone.',
            GOLD_CALL,
            True,
        ),
        (
            "Use torch.hub.load('pytorch/vision', 'resnet18', pretrained=True, progress=False) to load it.",
            GOLD_CALL,
            True,
        ),
        ("torch.hub.load('pytorch/vision', 'resnet50', pretrained=True)", GOLD_CALL, False),
        ("torch.hub.load('pytorch/vision', 'resnet18')", GOLD_CALL, False),  # a gold argument is missing
        ("torch.hub.load('pytorch/vision', 'resnet18', pretrained=False)", GOLD_CALL, False),
        ("hub.load('pytorch/vision', 'resnet18', pretrained=True)", GOLD_CALL, False),  # another function
        ("I would use ResNet-18.", GOLD_CALL, False),
        # APIBench's own gold calls are not always valid Python (a positional after keywords).
        (
            "torch.hub.load('szq0214/MEAL-V2', 'meal_v2', 'mealv2_resnest50', pretrained=True)",
            "torch.hub.load(repo_or_dir='szq0214/MEAL-V2', 'meal_v2', model='mealv2_resnest50', pretrained=True)",
            True,
        ),
    ],
)
def test_api_call_match(prediction, gold, expected):
    assert api_call_match(prediction, gold) is expected


# --- the builder on synthetic items -------------------------------------------------------------


def passage(title: str, text: str) -> QAPassage:
    return QAPassage(id=passage_id(title, text), title=title, text=text, source_path=f"{title}.txt")


def synthetic_items(n: int, n_distractors: int = 6) -> list[QAItem]:
    items = []
    for i in range(n):
        gold = passage(
            f"doc{i}", f"Intro sentence for item {i}. The code word for item {i} is word{i}. Nothing else."
        )
        distractors = [
            passage(f"other{i}-{j}", f"Item {i} distractor {j} talks about something else.")
            for j in range(n_distractors)
        ]
        items.append(
            QAItem(
                id=f"item{i}",
                question=f"What is the code word for item {i}?",
                answers=[f"word{i}"],
                gold=[gold],
                distractors=distractors,
                answer_type="span",
                group=f"doc{i}",
                meta={"source": "synthetic"},
            )
        )
    return items


ITEMS = synthetic_items(500)


def test_same_seed_same_examples_and_other_seed_differs():
    a = build_raft_examples(ITEMS[:100], RaftConfig(seed=1))
    assert a == build_raft_examples(ITEMS[:100], RaftConfig(seed=1))
    b = build_raft_examples(ITEMS[:100], RaftConfig(seed=2))
    assert [e.passages for e in a] != [e.passages for e in b]
    assert [e.has_oracle for e in a] != [e.has_oracle for e in b]


def test_examples_do_not_depend_on_item_order():
    forward = build_raft_examples(ITEMS[:50], RaftConfig())
    backward = build_raft_examples(list(reversed(ITEMS[:50])), RaftConfig())
    assert forward == list(reversed(backward))


@pytest.mark.parametrize("p_oracle", [0.8, 0.5, 0.0, 1.0])
def test_oracle_share_follows_p_oracle(p_oracle):
    examples = build_raft_examples(ITEMS, RaftConfig(p_oracle=p_oracle))
    n = len(examples)
    kept = sum(e.has_oracle for e in examples)
    tolerance = 4 * math.sqrt(n * p_oracle * (1 - p_oracle))  # 4 binomial standard deviations
    assert abs(kept - n * p_oracle) <= tolerance


def test_context_has_k_passages_and_the_oracle_only_when_kept():
    pool = [p for item in ITEMS[200:] for p in item.gold]  # 6 own distractors are too few for k = 7
    for k in (1, 3, 5, 7):
        for e in build_raft_examples(ITEMS[:200], RaftConfig(n_passages=k), random_pool=pool):
            ids = [p.id for p in e.passages]
            assert len(ids) == k and len(set(ids)) == k
            shown_oracles = [i for i in ids if i in e.oracle_ids]
            assert shown_oracles == (e.oracle_ids if e.has_oracle else [])


def test_random_pool_tops_up_and_never_brings_back_the_oracle():
    item = synthetic_items(1, n_distractors=1)[0]
    disguised_oracle = QAPassage(id="other-id", title="copy", text=item.gold[0].text)
    pool = [item.gold[0], disguised_oracle] + [passage(f"pool{j}", f"Pool passage {j}.") for j in range(20)]
    for seed in range(30):
        (e,) = build_raft_examples([item], RaftConfig(n_passages=5, seed=seed), random_pool=pool)
        assert len(e.passages) == 5
        texts = [p.text for p in e.passages]
        assert texts.count(item.gold[0].text) == (1 if e.has_oracle else 0)
        assert item.distractors[0] in e.passages  # the item's own hard negative comes first


def test_prompt_is_exactly_the_serve_time_rendering():
    for e in build_raft_examples(ITEMS[:50], RaftConfig()):
        expected = get_template("cited-answer").render([{"role": "user", "content": e.question}], e.passages)
        assert e.prompt == expected
        assert (
            e.meta["template"] == "cited-answer"
            and e.meta["template_version"] == get_template("cited-answer").version
        )


def test_reasoning_targets_quote_the_cited_passage_verbatim():
    for e in build_raft_examples(ITEMS[:200], RaftConfig(target="reasoning")):
        quotes = QUOTE.findall(e.completion)
        if e.has_oracle:
            assert quotes and e.completion.endswith(f"Answer: {e.answer}")
            for quote, n in quotes:
                cited = e.passages[int(n) - 1]
                assert quote in cited.text and cited.id in e.oracle_ids
        else:
            assert not quotes and "[" not in e.completion


def test_plain_targets_cite_the_oracle():
    for e in build_raft_examples(ITEMS[:200], RaftConfig(target="plain")):
        if e.has_oracle:
            n = int(re.search(r"\[(\d+)\]", e.completion).group(1))
            assert e.passages[n - 1].id in e.oracle_ids
            assert e.completion == f"{e.answer} [{n}]"
        else:
            assert e.completion == e.answer  # policy "answer": the answer anyway, citing nothing


@pytest.mark.parametrize("target", ["plain", "reasoning"])
def test_abstain_policy_when_the_oracle_is_removed(target):
    examples = build_raft_examples(ITEMS[:300], RaftConfig(policy="abstain", target=target))
    removed = [e for e in examples if not e.has_oracle]
    assert removed and all(e.target == "abstain" and e.answer == ABSTAIN for e in removed)
    expected = ABSTAIN_ANSWER if target == "plain" else f"Answer: {ABSTAIN_ANSWER}"
    assert all(e.completion == expected for e in removed)
    assert all(e.target == target and e.answer.startswith("word") for e in examples if e.has_oracle)


def test_unanswerable_items_always_abstain():
    items = read_qa_file(FIXTURES / "squad_v2_flat.jsonl")
    unanswerable = build_raft_examples(items, RaftConfig(policy="answer", p_oracle=1.0))[2]
    assert not unanswerable.has_oracle and unanswerable.target == "abstain"


def test_many_gold_passages_leave_room_for_a_distractor():
    pubmed = read_qa_file(FIXTURES / "pubmedqa.json")
    pool = [p for item in pubmed for p in item.gold]
    e = build_raft_examples(pubmed[:1], RaftConfig(n_passages=3, p_oracle=1.0), random_pool=pool)[0]
    assert len(e.passages) == 3 and sum(p.id in e.oracle_ids for p in e.passages) == 2
    assert e.passages[0].section or e.passages[1].section  # PubMedQA labels travel as sections


@pytest.mark.parametrize("policy", ["answer", "abstain"])
def test_zero_passages_builds_closed_book_dsf_examples(policy):
    """n_passages=0 is the RAFT paper's DSF baseline: the question alone, the plain answer as target."""
    for e in build_raft_examples(ITEMS[:40], RaftConfig(n_passages=0, policy=policy, target="reasoning")):
        assert e.passages == [] and not e.has_oracle
        assert e.target == "plain" and e.completion == e.meta["answers"][0]
        assert e.prompt == get_template("cited-answer").render([{"role": "user", "content": e.question}], [])


def test_config_is_validated():
    for bad in ({"n_passages": -1}, {"p_oracle": 1.5}, {"policy": "refuse"}, {"target": "cot"}):
        with pytest.raises(ConfigError):
            RaftConfig(**bad)
    with pytest.raises(ConfigError):
        build_raft_examples(ITEMS[:1], RaftConfig(template="no-such-template"))


# --- preference pairs ----------------------------------------------------------------------------


def test_dpo_pair_shares_the_context():
    e = build_raft_examples(ITEMS[:1], RaftConfig(p_oracle=1.0))[0]
    pair = to_dpo_pair(e, "word999 [1]")
    assert pair == {
        "prompt": e.prompt,
        "chosen": [{"role": "assistant", "content": e.completion}],
        "rejected": [{"role": "assistant", "content": "word999 [1]"}],
    }
    with pytest.raises(RagloopError):
        to_dpo_pair(e, e.completion)


@pytest.mark.parametrize("target", ["plain", "reasoning"])
def test_misled_answer_trusts_a_distractor(target):
    for e in build_raft_examples(ITEMS[:100], RaftConfig(target=target)):
        wrong = misled_answer(e)
        assert wrong == misled_answer(e)  # deterministic
        n = int(re.search(r"\[(\d+)\]", wrong).group(1))
        assert e.passages[n - 1].id not in e.oracle_ids
        assert extract_answer(wrong) != e.answer and exact_match(extract_answer(wrong), e.answer) == 0.0
    lonely = build_raft_examples(ITEMS[:1], RaftConfig(n_passages=1, p_oracle=1.0))[0]
    assert misled_answer(lonely) == ""  # no distractor shown: nothing to be misled by


def test_misled_answer_for_api_and_label_items():
    api_items = read_qa_file(FIXTURES / "tinyhub_train.json")
    pool = read_api_docs(FIXTURES / "tinyhub_api.jsonl")
    for e in build_raft_examples(api_items, RaftConfig(n_passages=2), random_pool=pool):
        wrong = extract_answer(misled_answer(e), "api_call")
        assert wrong.startswith("torch.hub.load(") and not api_call_match(wrong, e.answer)
    pubmed = read_qa_file(FIXTURES / "pubmedqa.json")
    pool = [p for item in pubmed for p in item.gold]
    for e in build_raft_examples(pubmed, RaftConfig(n_passages=5), random_pool=pool):
        assert extract_answer(misled_answer(e), "label") in {"yes", "no", "maybe"} - {e.answer}


# --- the train/eval contract on every fixture and every real file -------------------------------


def check_contract(examples: list[RaftExample]) -> None:
    for e in examples:
        answer_type = e.meta["answer_type"]
        assert extract_answer(e.completion, answer_type) == e.answer, e.id
        for quote, n in QUOTE.findall(e.completion):
            assert quote in e.passages[int(n) - 1].text, e.id
        shown = {p.id for p in e.passages}
        assert e.has_oracle == bool(shown & set(e.oracle_ids)), e.id
        if e.target != "abstain":
            gold = e.meta["answers"][0]
            if answer_type == "api_call":
                assert api_call_match(e.answer, gold)
            else:
                assert exact_match(e.answer, e.meta["answers"]) == 1.0, e.id


CONFIGS = [
    RaftConfig(target="reasoning", policy="answer"),
    RaftConfig(target="plain", policy="abstain", seed=3),
]


@pytest.mark.parametrize("config", CONFIGS, ids=["reasoning-answer", "plain-abstain"])
def test_contract_on_fixtures(config):
    for name in (
        "hotpotqa.jsonl",
        "hotpotqa_hf.json",
        "squad.json",
        "pubmedqa.json",
        "tinyhub_train.json",
        "generic.jsonl",
    ):
        items = read_qa_file(FIXTURES / name)
        pool = [p for item in items for p in item.gold + item.distractors]
        check_contract(build_raft_examples(items, config, random_pool=pool))


@pytest.mark.parametrize("config", CONFIGS, ids=["reasoning-answer", "plain-abstain"])
def test_contract_on_real_files(config):
    def real(relative: str) -> Path:
        path = DATA / relative
        assert path.is_file(), f"public dataset file missing: {path}"
        return path

    pubmed = read_qa_file(real("pubmedqa/pqal_train.json"))
    sets = [
        (read_qa_file(real("hotpotqa_distractor/dev.jsonl")), ()),
        (read_qa_file(real("policyqa/dev.json")), ()),
        (pubmed, [p for item in pubmed for p in item.gold]),
        (
            read_qa_file(real("apibench_torchhub/torchhub_train.json")),
            read_api_docs(real("apibench_torchhub/torchhub_api.jsonl")),
        ),
    ]
    for items, pool in sets:
        examples = build_raft_examples(items, config, random_pool=pool)
        check_contract(examples)
        if pool:
            assert all(len(e.passages) == config.n_passages for e in examples)


def test_label_questions_say_which_answers_they_take_in_training_and_evaluation():
    from ragloop.datasets.qa import LABEL_HINT, passage_pool
    from ragloop.evaluation.conditions import build_case

    item = replace(ITEMS[0], answers=["yes"], answer_type="label")
    (example,) = build_raft_examples([item], RaftConfig())
    case = build_case(item, "distractors", 2, passage_pool(ITEMS[:5]), 0, get_template("cited-answer"))
    for prompt in (example.prompt, case.prompt):
        assert prompt[-1]["content"].count(LABEL_HINT) == 1
    assert example.question == item.question  # stored as asked; the hint is part of the rendering
