"""Evaluation scores on hand-made cases: a wrong answer never scores as right, normalisation, labels, API
calls, citations, groundedness, abstention; the paired bootstrap and Cohen's kappa; comparing two runs."""

from __future__ import annotations

import numpy as np
import pytest

from ragloop.datasets.answers import ABSTAIN_ANSWER
from ragloop.datasets.qa import QAItem, QAPassage, passage_pool
from ragloop.evaluation.compare import compare_examples
from ragloop.evaluation.conditions import choose_passages, distractor_stream, live_gold_ids
from ragloop.evaluation.metrics import (
    aggregate,
    citation_scores,
    cohens_kappa,
    macro_f1,
    paired_bootstrap,
    primary_metric,
    score_answer,
)
from ragloop.evaluation.review import agreement_stats, pick_for_review

GOLD = "Employees get 25 days of annual leave per year."
OTHER = "Sick leave requires a doctor's note after three days."


def score(
    output: str, answers: list[str], answer_type: str = "span", shown: list[str] | None = None, gold=("g",)
):
    shown = ["g", "d"] if shown is None else shown
    texts = {"g": GOLD, "d": OTHER, "g2": GOLD}
    return score_answer(output, answers, answer_type, shown, [texts.get(i, OTHER) for i in shown], list(gold))


# --- answers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "answers"),
    [
        ("Answer: 30 days", ["25 days"]),  # token F1 0.5: the number is what matters
        ("Answer: the capital of England", ["the capital of France"]),  # F1 0.67
        ("Answer: Paris", ["London", "the capital of England"]),
        ("Answer: no", ["yes"]),  # a span set whose answer looks like a label is still compared as text
        (ABSTAIN_ANSWER, ["25 days"]),
        ("Answer: The", ["the"]),  # normalises to "" on both sides, still not an answer
        ("", ["25 days"]),
    ],
)
def test_a_wrong_answer_never_scores_as_right(output: str, answers: list[str]) -> None:
    s = score(output, answers).scores
    assert s["correct"] is False
    assert s["em"] == 0.0


def test_normalisation_follows_squad() -> None:
    s = score("##begin_quote##Employees get 25 days##end_quote## [1]\nAnswer: The 25 Days [1].", ["25 days"])
    assert s.prediction == "The 25 Days"
    assert s.scores["em"] == 1.0 and s.scores["f1"] == 1.0 and s.scores["correct"]
    partial = score("Answer: 25 days of annual leave", ["25 days"]).scores
    assert partial["em"] == 0.0 and partial["f1"] == pytest.approx(2 * (2 / 5) * 1 / (2 / 5 + 1))
    assert partial["correct"]  # F1 0.57 >= 0.5: mostly right


def test_label_answers_and_macro_f1() -> None:
    yes = score("##begin_quote##Staff may work remotely.##end_quote## [1]\nAnswer: Yes.", ["yes"], "label")
    assert yes.prediction == "yes" and yes.scores["label_correct"] is True
    maybe = score("It depends, so maybe; but no quotes here.", ["no"], "label")
    assert maybe.prediction == "maybe" and maybe.scores["label_correct"] is False
    none = score("I cannot tell.", ["yes"], "label")
    assert none.prediction == "" and none.scores["correct"] is False
    # gold yes,yes,no,maybe; predicted yes,no,no,"": yes F1 2/3, no F1 2/3, maybe F1 0 -> 4/9
    assert macro_f1(["yes", "yes", "no", "maybe"], ["yes", "no", "no", ""]) == pytest.approx(4 / 9)


def test_api_calls_match_by_ast() -> None:
    gold = "torch.hub.load(repo_or_dir='pytorch/vision', model='resnet18', pretrained=True)"
    same = score('Answer: torch.hub.load("pytorch/vision", "resnet18", pretrained=True)', [gold], "api_call")
    assert same.scores["api_match"] is True and same.scores["correct"] is True
    other = score("Answer: torch.hub.load('pytorch/vision', 'resnet50', pretrained=True)", [gold], "api_call")
    assert other.scores["api_match"] is False and other.scores["correct"] is False


def test_citation_precision_and_recall() -> None:
    # shown [g, d, g2]; [1] -> gold, [3] -> gold, [5] was never shown: precision 2/3, both golds cited.
    s = citation_scores("A [1]. B [3]. C [5].", ["g", "d", "g2"], ["g", "g2"])
    assert s["citation_precision"] == pytest.approx(2 / 3) and s["citation_recall"] == 1.0
    s = citation_scores("A [2][1].", ["g", "d", "g2"], ["g", "g2"])
    assert s["citation_precision"] == 0.5 and s["citation_recall"] == 0.5
    s = citation_scores("No citation.", ["d"], ["g"])
    assert s["citation_precision"] is None and s["citation_recall"] is None and s["cites"] is False


def test_groundedness_checks_cited_statements() -> None:
    assert (
        score("Employees get 25 days of annual leave per year [1].", ["25 days"]).scores["grounded"] is True
    )
    assert (
        score("Employees get 30 days of annual leave per year [1].", ["25 days"]).scores["grounded"] is False
    )
    assert score("Employees get 25 days of annual leave per year.", ["25 days"]).scores["grounded"] is False
    assert score("Answer: 25 days", ["25 days"], shown=[]).scores["grounded"] is None  # closed-book


def test_abstention_is_right_without_the_gold_and_wrong_with_it() -> None:
    without = score(f"Answer: {ABSTAIN_ANSWER}", ["25 days"], shown=["d"]).scores
    assert without["abstained"] and without["abstain_ok"] is True and without["false_abstention"] is None
    with_gold = score(ABSTAIN_ANSWER, ["25 days"]).scores
    assert (
        with_gold["false_abstention"] is True and with_gold["abstain_ok"] is None and not with_gold["correct"]
    )
    guessed = score("Answer: 25 days", ["25 days"], shown=["d"]).scores
    assert guessed["abstain_ok"] is False and guessed["correct"]
    unanswerable = score(ABSTAIN_ANSWER, [], shown=["d"], gold=()).scores
    assert unanswerable["correct"] is True and unanswerable["em"] == 1.0


def test_aggregate_keys_and_values() -> None:
    rows = []
    for output, answers, shown in [
        ("Answer: 25 days [1]", ["25 days"], ["g", "d"]),
        (ABSTAIN_ANSWER, ["25 days"], ["d"]),
    ]:
        s = score(output, answers, shown=shown)
        rows.append({"scores": s.scores, "prediction": s.prediction, "answers": answers, "latency_ms": 10.0})
    m = aggregate(rows)
    assert m["n"] == 2 and m["em"] == 0.5 and m["correct"] == 0.5
    assert m["abstain_rate"] == 0.5 and m["abstention_accuracy"] == 1.0 and m["false_abstention_rate"] == 0.0
    assert m["citation_precision"] == 1.0 and m["latency_ms_p50"] == 10.0
    assert "accuracy" not in m and "api_match" not in m  # no label / API questions in this set


def test_headline_metric_follows_the_kind_most_answers_are() -> None:
    def run(kinds: list[tuple[str, str, str]]) -> dict:
        rows = []
        for output, answer, kind in kinds:
            s = score(output, [answer], kind)
            rows.append(
                {"scores": s.scores, "prediction": s.prediction, "answers": [answer], "latency_ms": 1.0}
            )
        return aggregate(rows)

    # HotpotQA: mostly spans, a few yes/no comparisons; scored by F1, not by the accuracy of the few labels.
    hotpot = run([("Answer: Paris", "Paris", "span")] * 3 + [("Answer: yes", "yes", "label")])
    assert hotpot["n_label"] == 1 and hotpot["accuracy"] == 1.0 and primary_metric(hotpot) == "f1"
    pubmed = run([("Answer: no", "yes", "label")] * 3 + [("Answer: Paris", "Paris", "span")])
    assert primary_metric(pubmed) == "accuracy"
    api = run([("Answer: torch.hub.load('a', 'b')", "torch.hub.load('a', 'b')", "api_call")] * 2)
    assert primary_metric(api) == "api_match"
    assert (
        primary_metric({"n": 4, "accuracy": 0.5, "f1": 0.2}) == "accuracy"
    )  # a run stored before the counts


# --- conditions -------------------------------------------------------------------------------------


def _item(i: int, n_distractors: int = 2) -> QAItem:
    gold = [QAPassage(f"g{i}", "Gold", f"gold text {i}")]
    distractors = [QAPassage(f"d{i}-{j}", "D", f"distractor {i} {j}") for j in range(n_distractors)]
    return QAItem(f"q{i}", f"question {i}?", [f"answer {i}"], gold, distractors, "span")


def test_distractors_are_seeded_nested_and_never_gold() -> None:
    items = [_item(i) for i in range(6)]
    pool = passage_pool(items) + [QAPassage("dup", "Gold", "gold text 0")]  # the gold's text under another id
    stream = [p.id for _, p in zip(range(10), distractor_stream(items[0], pool, seed=1), strict=False)]
    assert set(stream[:2]) == {"d0-0", "d0-1"} and "g0" not in stream and "dup" not in stream
    assert len(set(stream)) == len(stream) == 10
    four = {p.id for p in choose_passages(items[0], "distractors", 4, pool, seed=1)}
    eight = {p.id for p in choose_passages(items[0], "distractors", 8, pool, seed=1)}
    assert "g0" in four and four <= eight and len(eight) == 9
    assert choose_passages(items[0], "distractors", 4, pool, seed=1) == choose_passages(
        items[0], "distractors", 4, pool, seed=1
    )
    assert "g0" not in {p.id for p in choose_passages(items[0], "no-gold", 4, pool, seed=1)}
    assert [p.id for p in choose_passages(items[0], "oracle", None, pool, seed=1)] == ["g0"]
    assert choose_passages(items[0], "closed-book", None, pool, seed=1) == []


def test_live_gold_matches_chunks_by_text() -> None:
    item = QAItem(
        "q",
        "?",
        ["a"],
        [QAPassage("g", "T", "The controller shall erase personal data without undue delay.")],
        [],
        "span",
    )
    chunk = QAPassage(
        "c1", "T", "Article 17. The controller shall erase personal data without undue delay. More."
    )
    other = QAPassage("c2", "T", "Something unrelated entirely, long enough to be a chunk of some document.")
    assert live_gold_ids(item, [chunk, other]) == ["g", "c1"]


# --- statistics -------------------------------------------------------------------------------------


def test_bootstrap_ci_contains_the_true_difference() -> None:
    # Paired scores whose true mean difference is exactly 0.1 (B = A + noise of mean 0.1). A 95% interval
    # must contain it in about 95% of repetitions: checked on 100 synthetic data sets, not on one lucky seed.
    rng = np.random.default_rng(7)
    covered = 0
    for rep in range(100):
        a = rng.normal(0.5, 0.2, size=200)
        b = a + 0.1 + rng.normal(0, 0.05, size=200)
        iv = paired_bootstrap(list(a), list(b), resamples=1000, seed=rep)
        assert iv is not None and iv.n == 200 and iv.excludes_zero
        covered += iv.low <= 0.1 <= iv.high
    assert 88 <= covered <= 100
    # Pairing matters: the interval is far narrower than the spread of either side (sd 0.2).
    assert iv.high - iv.low < 0.03


def test_bootstrap_excludes_zero_only_for_a_large_difference() -> None:
    rng = np.random.default_rng(3)
    a = (rng.random(200) < 0.5).astype(float)
    flips = rng.random(200) < 0.3
    big = np.where(flips, 1.0, a)  # 30% of answers become right: a large improvement
    assert paired_bootstrap(list(a), list(big), seed=1).excludes_zero
    small = a.copy()
    small[:2] = 1 - small[:2]  # two answers change: no evidence either way
    assert not paired_bootstrap(list(a), list(small), seed=1).excludes_zero
    assert paired_bootstrap([None, 1.0], [0.0, None]) is None  # no complete pair


def test_cohens_kappa() -> None:
    assert cohens_kappa([True, False, True], [True, False, True]) == 1.0
    assert cohens_kappa([True, True, False, False], [True, False, True, False]) == pytest.approx(0.0)
    # 8 pairs: 3 both yes, 3 both no, 2 disagree -> po 0.75, pe 0.5 -> 0.5
    a = [True, True, True, False, False, False, True, False]
    b = [True, True, True, False, False, False, False, True]
    assert cohens_kappa(a, b) == pytest.approx(0.5)
    accuracy, kappa, confusion = agreement_stats(a, b)
    assert accuracy == 0.75 and kappa == pytest.approx(0.5)
    assert confusion["metric_right_reviewer_up"] == 3 and confusion["metric_right_reviewer_down"] == 1


def test_review_sample_mixes_right_and_wrong() -> None:
    class E:
        def __init__(self, i: int, right: bool):
            self.i, self.scores = i, {"correct": right}

    examples = [E(i, i < 8) for i in range(10)]  # 8 right, 2 wrong
    picked = pick_for_review(examples, 4, seed=0)
    assert sum(1 for e in picked if not e.scores["correct"]) == 2 and len(picked) == 4


def test_compare_examples_pairs_by_id_and_lists_changed_verdicts() -> None:
    def row(i: int, right: bool, f1: float) -> dict:
        return {"example_id": f"q{i}", "question": f"q{i}?", "answers": ["x"], "prediction": "x" if right else "y",
                "scores": {"correct": right, "em": float(right), "f1": f1, "abstained": False}, "latency_ms": 5.0}  # fmt: skip

    a = [row(i, i % 2 == 0, 0.5) for i in range(40)]
    b = [row(i, True, 0.9) for i in range(1, 41)]  # q0 missing in B, q40 missing in A
    n, metrics, changed = compare_examples(a, b, resamples=500)
    assert n == 39
    by_name = {m.name: m for m in metrics}
    assert by_name["correct"].interval.diff == pytest.approx(1 - 19 / 39)
    assert by_name["correct"].interval.excludes_zero and by_name["f1"].interval.diff == pytest.approx(0.4)
    assert {c.change for c in changed} == {"wrong→right"} and len(changed) == 20


def test_refusals_count_as_abstentions_but_a_label_answer_does_not() -> None:
    refusal = score("The passages do not mention how much leave employees get.", ["25 days"]).scores
    assert refusal["abstained"] and not refusal["correct"]
    hedged = score("I don't know for sure, but the policy allows it. Answer: yes", ["yes"], "label").scores
    assert not hedged["abstained"] and hedged["correct"]


def test_compare_calls_fewer_unnecessary_citations_better() -> None:
    from rich.console import Console

    from ragloop.evaluation.compare import Comparison, MetricDiff, comparison_tables
    from ragloop.evaluation.metrics import Interval

    run = {"id": "a" * 32, "model_version": "v", "condition": "distractors"}
    fewer = MetricDiff("unnecessary_citation_rate", 0.7, 0.5, Interval(-0.2, -0.3, -0.1, 100))
    more_right = MetricDiff("correct", 0.2, 0.4, Interval(0.2, 0.1, 0.3, 100))
    console = Console(width=200, record=True)
    console.print(comparison_tables(Comparison(run, run, 100, [fewer, more_right]))[0])
    rows = {line.split("│")[1].strip(): line for line in console.export_text().splitlines() if "│" in line}
    assert "better" in rows["unnecessary_citation_rate"] and "better" in rows["correct"]
