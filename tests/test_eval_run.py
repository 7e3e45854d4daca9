"""Evaluation runs end to end with the tiny model: every condition on a small generic JSONL file (stored
rows, metrics, reopening, registry), batched = one-by-one, compare, review + agreement, the robustness
report, dataset-version examples, and the CLI door."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from ragloop.config import Settings
from ragloop.datasets.importers import read_qa_file
from ragloop.datasets.raft import RaftConfig, build_raft_examples
from ragloop.errors import RagloopError
from ragloop.evaluation.compare import compare_runs
from ragloop.evaluation.review import EVAL_QUEUE, agreement, sample_for_review
from ragloop.evaluation.robustness import run_robustness
from ragloop.evaluation.run import (
    EvalConfig,
    example_to_item,
    get_run,
    list_runs,
    mark_interrupted,
    prepare,
    rescore_run,
    run_eval,
    run_examples,
)
from ragloop.feedback.service import add_feedback
from ragloop.generation.assistant import Assistant
from ragloop.store import claims
from ragloop.store.db import session_scope
from ragloop.store.models import DatasetVersion, EvalExample, EvalRun, Interaction, ModelVersion, ReviewItem

VACATION = (
    "Employees receive twenty-five days of paid vacation per year. "
    "Unused vacation days expire at the end of March of the following year."
)
SECURITY = (
    "Passwords must be rotated every ninety days. Laptops must use full disk encryption. "
    "Report a lost badge to the security desk the same day."
)
ITEMS = [
    {"id": "vacation", "question": "How many days of paid vacation do employees receive?",
     "answers": ["twenty-five days", "25 days"], "gold": [{"id": "vac", "title": "Vacation policy", "text": VACATION}],
     "distractors": [{"title": "Sick leave", "text": "Sick leave requires a doctor's note after three days."}]},
    {"id": "passwords", "question": "How often must passwords be rotated?", "answers": ["every ninety days"],
     "gold": [{"id": "sec", "title": "Security", "text": SECURITY}]},
    {"id": "disk", "question": "Must laptops use full disk encryption?", "answers": ["yes"], "answer_type": "label",
     "gold": [{"id": "sec", "title": "Security", "text": SECURITY}]},
    {"id": "fines", "question": "How high can fines be?", "answers": ["20 000 000 EUR"],
     "gold": [{"title": "Fines", "text": "Fines can reach 20 000 000 EUR or 4 % of the total worldwide annual turnover."}]},
    {"id": "resnet", "question": "Load a pretrained ResNet-18 from Torch Hub.", "answer_type": "api_call",
     "answers": ["torch.hub.load('pytorch/vision', 'resnet18', pretrained=True)"],
     "gold": [{"title": "ResNet", "text": "api_call: torch.hub.load('pytorch/vision', 'resnet18', pretrained=True)"}]},
]  # fmt: skip
FAST = {"max_new_tokens": 6, "batch_size": 4}


@pytest.fixture
def qa_file(tmp_path: Path) -> Path:
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in ITEMS))
    return path


@pytest.fixture
def assistant(kb_home: Settings) -> Assistant:
    return Assistant(kb_home)


def test_every_condition_stores_a_reopenable_run(
    kb_home: Settings, assistant: Assistant, qa_file: Path
) -> None:
    gold_ids = {item.id: {p.id for p in item.gold} for item in read_qa_file(qa_file)}
    runs = {}
    for condition in ("oracle", "distractors", "no-gold", "closed-book", "live"):
        config = EvalConfig(data=str(qa_file), condition=condition, n_distractors=2, **FAST)
        run = run_eval(kb_home, config, assistant=assistant)
        runs[condition] = run
        rows = run_examples(kb_home, run.id)
        assert run.status == "done" and run.n_examples == len(rows) == len(ITEMS)
        assert {"n", "em", "f1", "correct", "abstain_rate", "latency_ms_p50", "examples_per_s"} <= set(
            run.metrics
        )
        assert {"accuracy", "macro_f1", "api_match"} <= set(run.metrics)  # one label and one API question
        for row in rows:
            shown, gold = set(row.passage_ids), gold_ids[row.example_id]
            assert set(row.scores) >= {"correct", "em", "f1", "abstained", "citation_precision", "grounded"}
            assert row.prompt_sha256 and row.output is not None and row.latency_ms > 0
            if condition == "oracle":
                assert shown == gold
            elif condition == "distractors":
                assert gold <= shown and len(row.passage_ids) == len(gold) + 2
            elif condition == "no-gold":
                assert not shown & gold and len(row.passage_ids) == 2
            elif condition == "closed-book":
                assert row.passage_ids == []
            else:
                assert 0 < len(row.passage_ids) <= kb_home.retrieval.top_k
                assert set(assistant.kb.get_chunks(row.passage_ids)) == shown  # real KB chunks
        assert run.n_distractors == (2 if condition in ("distractors", "no-gold") else None)
    live = {r.example_id: r for r in run_examples(kb_home, runs["live"].id)}
    assert len(live["vacation"].gold_ids) > 1  # the KB chunk holding the gold text counts as gold

    # Reopen by prefix; the prompts rebuild to the stored hashes; results are attached to the version.
    again = get_run(kb_home, runs["distractors"].id[:10])
    assert again.metrics == runs["distractors"].metrics and again.config["key"]
    prep = prepare(kb_home, EvalConfig(data=str(qa_file), condition="distractors", n_distractors=2))
    stored = {r.example_id: r.prompt_sha256 for r in run_examples(kb_home, again.id)}
    assert {c.item.id: c.prompt_sha256 for c in prep.cases} == stored
    assert [r.id for r in list_runs(kb_home, "base")][:5] == [runs[c].id for c in reversed(list(runs))]
    with session_scope(kb_home.db_url) as s:
        evals = s.get(ModelVersion, runs["oracle"].model_version).meta["evals"]
    assert (
        [e["condition"] for e in evals] == list(runs) and evals[1]["k"] == 2 and "f1" in evals[1]["metrics"]
    )

    comparison = compare_runs(kb_home, runs["distractors"].id, runs["no-gold"].id, resamples=200)
    assert comparison.n_common == len(ITEMS)
    names = {m.name for m in comparison.metrics}
    assert {"correct", "f1", "abstain_rate", "latency_ms", "macro_f1"} <= names


def test_batched_generation_matches_one_by_one(
    kb_home: Settings, assistant: Assistant, qa_file: Path
) -> None:
    one = run_eval(
        kb_home,
        EvalConfig(data=str(qa_file), condition="oracle", max_new_tokens=6, batch_size=1),
        assistant=assistant,
    )
    batched = run_eval(
        kb_home,
        EvalConfig(data=str(qa_file), condition="oracle", max_new_tokens=6, batch_size=5),
        assistant=assistant,
    )
    a = {r.example_id: (r.output, r.scores["completion_tokens"]) for r in run_examples(kb_home, one.id)}
    b = {r.example_id: (r.output, r.scores["completion_tokens"]) for r in run_examples(kb_home, batched.id)}
    assert a == b


def test_limit_draws_the_same_sample(kb_home: Settings, qa_file: Path) -> None:
    """--limit evaluates a seeded random sample: the same seed draws the same questions, another seed
    others, and the sample is not simply the head of the file (seed 4 happens to draw it, so several
    seeds are drawn)."""

    def drawn(seed: int, limit: int = 3) -> list[str]:
        config = EvalConfig(data=str(qa_file), limit=limit, sample_seed=seed)
        return [case.item.id for case in prepare(kb_home, config).cases]

    in_file = [item["id"] for item in ITEMS]
    samples = {seed: drawn(seed) for seed in range(4)}
    assert samples == {seed: drawn(seed) for seed in range(4)}  # reproducible
    for sample in samples.values():
        assert len(sample) == 3 and sample == [i for i in in_file if i in sample]  # kept in file order
    assert len({tuple(sample) for sample in samples.values()}) > 1  # the seed changes the sample
    assert any(sample != in_file[:3] for sample in samples.values())  # a sample, not the first items
    assert drawn(0, limit=len(ITEMS)) == in_file


def test_review_queue_and_agreement(kb_home: Settings, assistant: Assistant, qa_file: Path) -> None:
    run = run_eval(kb_home, EvalConfig(data=str(qa_file), n_distractors=1, **FAST), assistant=assistant)
    ids = sample_for_review(kb_home, run.id, n=3)
    assert len(ids) == 3
    with session_scope(kb_home.db_url) as s:
        for iid in ids:
            interaction = s.get(Interaction, iid)
            example = s.scalars(select(EvalExample).where(EvalExample.interaction_id == iid)).one()
            shown = interaction.filters["eval_passages"]
            assert interaction.source == "eval" and interaction.answer == example.output
            assert (
                [p["passage_id"] for p in shown]
                == example.passage_ids
                == [p.chunk_id for p in interaction.passages]
            )
            assert all(p["text"] for p in shown) and interaction.prompt_sha256 == example.prompt_sha256
            item = s.scalars(select(ReviewItem).where(ReviewItem.interaction_id == iid)).one()
            assert item.reason == "eval" and item.queue == EVAL_QUEUE
        examples = {
            e.interaction_id: e for e in s.scalars(select(EvalExample).where(EvalExample.run_id == run.id))
        }
        for iid in ids:  # the reviewer agrees with the metric on all but the first
            right = bool(examples[iid].scores["correct"])
            add_feedback(
                s, iid, {"thumbs": "up" if right != (iid == ids[0]) else "down", "reviewer_id": "expert"}
            )
    assert len(sample_for_review(kb_home, run.id, n=10)) == len(ITEMS) - 3  # only answers not yet queued
    result = agreement(kb_home, run.id)
    assert result.n_queued == len(ITEMS) and result.n_judged == 3 and result.reviewers == ["expert"]
    assert result.accuracy == pytest.approx(2 / 3) and len(result.disagreements) == 1


def test_robustness_report_writes_table_and_plot_and_reuses_runs(
    kb_home: Settings, qa_file: Path, tmp_path: Path
) -> None:
    base = EvalConfig(data=str(qa_file), limit=3, max_new_tokens=4, batch_size=4)
    out = tmp_path / "report"
    report = run_robustness(kb_home, ["base"], base, [0, 1], out, no_gold=True)
    assert [(r.condition, r.k, r.reused) for r in report.rows] == [
        ("distractors", 0, False), ("distractors", 1, False), ("no-gold", 1, False)
    ]  # fmt: skip
    table = report.markdown.read_text()
    assert "| base | " in table and table.count("\n| base | base-") == 3  # one row per run
    pivot = next(line for line in table.splitlines() if line.startswith("| model ("))
    assert pivot.count("|") == 5 and "k = 0 (gold alone)" in pivot and "gold removed, k = 1" in pivot
    [curve] = [line for line in table.splitlines() if line.startswith("| base | ") and "base-" not in line]
    assert curve.count("|") == 5  # the model's three runs, read across
    assert report.png.stat().st_size > 1000 and report.svg.read_text().lstrip().startswith("<?xml")
    again = run_robustness(kb_home, ["base"], base, [0, 1], out, no_gold=True)
    assert all(r.reused for r in again.rows) and [r.run_id for r in again.rows] == [
        r.run_id for r in report.rows
    ]


def test_dataset_version_test_split_is_evaluated_under_any_condition(
    home: Settings, qa_file: Path, tmp_path: Path
) -> None:
    items = read_qa_file(qa_file)
    examples = build_raft_examples(items, RaftConfig(n_passages=3, p_oracle=0.5, seed=1))
    for item, ex in zip(items, examples, strict=True):
        back = example_to_item(dataclasses.asdict(ex))
        assert back.question == item.question and back.answers == item.answers
        assert back.answer_type == item.answer_type
        if ex.has_oracle:
            assert [p.id for p in back.gold] == [p.id for p in item.gold]
        else:
            assert back.gold == [] and back.meta["gold_missing"]
    # A dataset version whose test split holds these examples (written as `dataset build` writes them).
    folder = tmp_path / "ds-test"
    folder.mkdir()
    (folder / "test.jsonl").write_text("".join(json.dumps(dataclasses.asdict(ex)) + "\n" for ex in examples))
    with session_scope(home.db_url) as s:
        s.add(
            DatasetVersion(
                id="ds-test", name="t", content_hash="c" * 64, policy={}, source="import", path=str(folder)
            )
        )
    without_oracle = sum(1 for ex in examples if not ex.has_oracle)
    assert 0 < without_oracle < len(examples)
    oracle = prepare(home, EvalConfig(data="ds-test", condition="oracle"))
    assert len(oracle.cases) == len(examples) - without_oracle
    assert oracle.skipped == {"gold passages not stored in the dataset version": without_oracle}
    assert oracle.data.hash == "c" * 64 and oracle.data.label == "ds-test"
    assert len(prepare(home, EvalConfig(data="ds-test", condition="no-gold")).cases) == len(examples)


def test_cli_eval_show_list_compare(kb_home: Settings, qa_file: Path) -> None:
    from ragloop.cli import app

    runner = CliRunner()
    home = ["--home", str(kb_home.home)]
    ids = []
    for condition in ("oracle", "closed-book"):
        result = runner.invoke(
            app,
            [
                "eval",
                "--data",
                str(qa_file),
                "--condition",
                condition,
                "--max-new-tokens",
                "4",
                "--json",
                *home,
            ],
        )
        assert result.exit_code == 0, result.output
        ids.append(json.loads(result.stdout[result.stdout.index("{") :])["run_id"])
    shown = runner.invoke(app, ["eval", "show", ids[0][:8], "--examples", "2", *home])
    assert shown.exit_code == 0 and "oracle" in shown.stdout and "prediction:" in shown.stdout
    listed = runner.invoke(app, ["eval", "list", "--model", "base", *home])
    assert listed.exit_code == 0 and ids[1][:12] in listed.stdout
    compared = runner.invoke(app, ["eval", "compare", ids[0], ids[1], "--resamples", "200", *home])
    assert compared.exit_code == 0 and "95% CI" in compared.stdout and "common questions" in compared.stdout
    missing = runner.invoke(app, ["eval", "--data", "no-such-file.jsonl", *home])
    assert missing.exit_code == 1 and "neither a QA file nor a dataset version" in missing.output
    oracle = [
        "eval",
        "--data",
        str(qa_file),
        "--condition",
        "oracle",
        "--max-new-tokens",
        "4",
        "--json",
        *home,
    ]
    reused = runner.invoke(app, [*oracle, "--reuse"])
    assert reused.exit_code == 0 and "reusing stored run" in reused.output
    assert json.loads(reused.stdout[reused.stdout.index("{") :])["run_id"] == ids[0]
    fresh = runner.invoke(app, oracle)  # without --reuse a run is generated again
    assert json.loads(fresh.stdout[fresh.stdout.index("{") :])["run_id"] not in ids
    other = runner.invoke(app, [*oracle[:-4], "5", "--json", *home, "--reuse"])  # other settings: a new run
    assert (
        "reusing" not in other.output
        and json.loads(other.stdout[other.stdout.index("{") :])["run_id"] not in ids
    )


def test_eval_answers_show_in_their_review_queue_and_never_become_training_data(
    kb_home: Settings, assistant: Assistant, qa_file: Path, start_server
) -> None:
    from ragloop.curation.pipeline import load_candidates

    run = run_eval(kb_home, EvalConfig(data=str(qa_file), n_distractors=1, **FAST), assistant=assistant)
    ids = sample_for_review(kb_home, run.id, n=2)
    server = start_server(kb_home, assistant)
    with server.client(follow_redirects=True) as c:
        page = c.get(f"/review?queue={EVAL_QUEUE}")
        assert page.status_code == 200 and "eval" in page.text
        with session_scope(kb_home.db_url) as s:
            first = s.get(Interaction, ids[0])
            texts = [p["text"] for p in first.filters["eval_passages"]]
        assert any(t[:40] in page.text for t in texts) or any(
            t[:40] in c.get(f"/review?queue={EVAL_QUEUE}").text for t in texts
        )
    from ragloop.feedback.review import sample_queue

    with session_scope(kb_home.db_url) as s:
        assert sample_queue(s, 10).total == 0  # the traffic queue never samples eval answers
    assert [c.interaction_id for c in load_candidates(kb_home)] == []


def test_eval_killed_with_sigkill_is_interrupted_and_continued(kb_home: Settings, qa_file: Path) -> None:
    """A real crash: the eval process SIGKILLs itself once two answers are stored (one per batch). The run
    shows as interrupted, and the same evaluation again continues it, generating only the missing answers;
    its result equals an uninterrupted run's."""
    script = (
        "import os, signal, sys; from pathlib import Path; from ragloop.config import load_settings; "
        "from ragloop.evaluation.run import EvalConfig, run_eval\n"
        "def progress(done, total):\n"
        "    if done >= 2: os.kill(os.getpid(), signal.SIGKILL)\n"
        "run_eval(load_settings(Path(sys.argv[1])), EvalConfig(data=sys.argv[2], condition='oracle', "
        "max_new_tokens=6, batch_size=1), progress=progress)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(kb_home.home), str(qa_file)], capture_output=True, timeout=300
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]

    [killed] = list_runs(kb_home)
    assert killed.status == "interrupted"  # its process is gone: not "running" forever
    assert len(run_examples(kb_home, killed.id)) == 2
    with session_scope(kb_home.db_url) as s:
        kept = {ex.example_id: (ex.id, ex.output) for ex in s.scalars(select(EvalExample))}

    config = EvalConfig(data=str(qa_file), condition="oracle", max_new_tokens=6, batch_size=1)
    seen: list[int] = []
    resumed = run_eval(kb_home, config, progress=lambda done, total: seen.append(done))
    assert resumed.id == killed.id and resumed.status == "done" and resumed.config["resumed"] == 1
    assert seen[0] == 2 and seen[-1] == len(ITEMS)  # started from the two stored answers
    examples = run_examples(kb_home, resumed.id)
    assert len(examples) == len(ITEMS)
    assert {ex.example_id: (ex.id, ex.output) for ex in examples if ex.example_id in kept} == kept

    fresh = run_eval(kb_home, dataclasses.replace(config, resume=False))
    assert fresh.id != resumed.id
    assert {k: v for k, v in fresh.metrics.items() if k != "examples_per_s" and "latency" not in k} == {
        k: v for k, v in resumed.metrics.items() if k != "examples_per_s" and "latency" not in k
    }
    assert run_eval(kb_home, config).id not in (resumed.id, fresh.id)  # a finished run is not continued


def test_two_processes_cannot_both_continue_one_interrupted_run(kb_home: Settings, qa_file: Path) -> None:
    """Continuing is a conditional claim: the first taker gets the run, a second one (another process at
    the same moment) gets None and its evaluation starts a run of its own instead of writing into it."""
    from ragloop.evaluation.run import _take_over, prepare

    config = EvalConfig(data=str(qa_file), condition="oracle", max_new_tokens=4, batch_size=4)
    run = run_eval(kb_home, config)
    with session_scope(kb_home.db_url) as s:
        s.get(type(run), run.id).status = "interrupted"
    cases = prepare(kb_home, config).cases
    first = _take_over(kb_home, run, cases, run.config)
    assert first is not None and first[0].status == "running" and len(first[1]) == len(ITEMS)
    assert _take_over(kb_home, run, cases, run.config) is None
    other = run_eval(kb_home, config)  # the run is claimed (running, by a live pid): not continued
    assert other.id != run.id and other.status == "done"


def test_reuse_needs_the_same_prompts_not_only_the_same_settings(kb_home: Settings, qa_file: Path) -> None:
    """The key covers settings, not code: a stored run whose prompts were built differently (here: its
    recorded digest says so, as after a change in how prompts are worded) is not reused."""
    from ragloop.evaluation.run import reusable_run

    config = EvalConfig(data=str(qa_file), condition="oracle", max_new_tokens=4, batch_size=4)
    run = run_eval(kb_home, config)
    assert len(run.config["prompts_sha256"]) == 64
    assert reusable_run(kb_home, config).id == run.id
    with session_scope(kb_home.db_url) as s:
        stored = s.get(type(run), run.id)
        stored.config = {**stored.config, "prompts_sha256": "0" * 64}
    assert reusable_run(kb_home, config) is None


def test_a_run_of_one_engine_never_stands_in_for_another(kb_home: Settings, qa_file: Path) -> None:
    """llama.cpp's quantised base answers differently from transformers' fp32: the engine is part of the
    key, so `--reuse` under `backend = "llamacpp"` does not print a transformers run (and the other way)."""
    from ragloop.evaluation.run import engine_id, reusable_run

    config = EvalConfig(data=str(qa_file), condition="oracle", max_new_tokens=4, batch_size=4)
    run = run_eval(kb_home, config)
    assert run.config["engine"] == "transformers" and reusable_run(kb_home, config).id == run.id
    other = kb_home.model_copy(
        update={"generator": kb_home.generator.model_copy(update={"backend": "llamacpp"})}
    )
    assert engine_id(other) == f"llamacpp/{other.generator.base_format}"
    assert reusable_run(other, config) is None


def test_a_stale_interrupt_cannot_take_a_run_from_its_new_owner(kb_home: Settings, qa_file: Path) -> None:
    """The race ``mark_interrupted`` used to lose: process A sees a dead owner; before A writes, process B
    marks the run interrupted and claims it (a new heartbeat). A's mark, fenced on the heartbeat it saw,
    changes nothing, so B keeps the run and no third process can claim it too."""
    from ragloop.evaluation.run import _take_over, prepare

    config = EvalConfig(data=str(qa_file), condition="oracle", max_new_tokens=4, batch_size=4)
    run = run_eval(kb_home, config)
    with session_scope(kb_home.db_url) as s:
        row = s.get(type(run), run.id)
        row.status = "running"
        row.owner = {"host": "elsewhere", "pid": 1}
        seen_by_a = row.heartbeat_at
    assert seen_by_a is not None  # every run is created with a heartbeat
    with session_scope(kb_home.db_url) as s:  # B: interrupt, then claim
        assert claims.mark_interrupted(s, EvalRun, run.id, seen_by_a)
    claimed = _take_over(kb_home, run, prepare(kb_home, config).cases, run.config)
    assert claimed is not None
    with session_scope(kb_home.db_url) as s:  # A, late, with what it saw before B
        assert not claims.mark_interrupted(s, EvalRun, run.id, seen_by_a)
        assert s.get(type(run), run.id).status == "running"
    assert _take_over(kb_home, run, prepare(kb_home, config).cases, run.config) is None


def test_a_run_on_another_host_is_interrupted_only_after_a_long_silence(
    kb_home: Settings, qa_file: Path
) -> None:
    """Several homes on one PostgreSQL: a pid on another machine cannot be checked from here, so its run is
    marked interrupted only once its heartbeat has been silent longer than ``REMOTE_STALE_S``."""
    from datetime import timedelta

    from ragloop.proc import REMOTE_STALE_S
    from ragloop.store.models import utcnow

    run = run_eval(kb_home, EvalConfig(data=str(qa_file), condition="oracle", max_new_tokens=4, batch_size=4))
    with session_scope(kb_home.db_url) as s:
        row = s.get(type(run), run.id)
        row.status = "running"
        row.owner = {"host": "another-machine", "boot_id": "x", "pid": 123}
        row.heartbeat_at = utcnow() - timedelta(seconds=REMOTE_STALE_S / 2)
    assert mark_interrupted(kb_home) == 0
    with session_scope(kb_home.db_url) as s:
        s.get(type(run), run.id).heartbeat_at = utcnow() - timedelta(seconds=REMOTE_STALE_S + 60)
    assert mark_interrupted(kb_home) == 1
    assert get_run(kb_home, run.id).status == "interrupted"


def test_a_running_eval_heartbeats(kb_home: Settings, qa_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The heartbeat is written from its own thread while answers are generated (so a long batch does not
    look like a dead run), and stops with the run."""
    import time

    import ragloop.evaluation.run as run_module

    monkeypatch.setattr(run_module, "HEARTBEAT_S", 0.05)
    beats = []

    def progress(done: int, total: int) -> None:
        time.sleep(0.2)
        with session_scope(kb_home.db_url) as s:
            beats.append(s.scalars(select(run_module.EvalRun.heartbeat_at)).one())

    run = run_eval(kb_home, EvalConfig(data=str(qa_file), condition="oracle", max_new_tokens=4, batch_size=1),
                   progress=progress)  # fmt: skip
    assert len(beats) == len(ITEMS) and beats == sorted(beats) and beats[-1] > beats[0]
    last = get_run(kb_home, run.id).heartbeat_at
    time.sleep(0.3)
    assert get_run(kb_home, run.id).heartbeat_at == last  # the thread stopped with the run


def test_rescore_scores_stored_answers_again_into_a_new_run(kb_home: Settings, qa_file: Path) -> None:
    from ragloop.cli import app

    run = run_eval(kb_home, EvalConfig(data=str(qa_file), n_distractors=1, max_new_tokens=2, batch_size=4))
    # A multi-hop style answer citing the answer's passage and another one together, stored as scored by
    # the old rule (each cited passage alone): not grounded.
    with session_scope(kb_home.db_url) as s:
        row = s.scalars(
            select(EvalExample).where(EvalExample.run_id == run.id, EvalExample.example_id == "vacation")
        ).one()
        row.output = "Twenty-five days [1][2]"
        row.scores = {**row.scores, "grounded": False, "prompt_tokens": 123}
    new = rescore_run(kb_home, run.id[:10])
    assert new.id != run.id and new.config["rescored_from"] == run.id and new.status == "done"
    old_rows = {e.example_id: e for e in run_examples(kb_home, run.id)}
    new_rows = {e.example_id: e for e in run_examples(kb_home, new.id)}
    assert old_rows.keys() == new_rows.keys()
    assert all(new_rows[k].output == old_rows[k].output for k in old_rows)  # nothing generated again
    again = new_rows["vacation"].scores
    assert again["grounded"] is True and again["prompt_tokens"] == 123 and again["correct"] is True
    assert old_rows["vacation"].scores["grounded"] is False  # the stored run is left as it was
    result = CliRunner().invoke(app, ["eval", "rescore", run.id, "--home", str(kb_home.home)])
    assert result.exit_code == 0 and "new run:" in result.stdout, result.output
    qa_file.write_text(qa_file.read_text() + "\n")  # the data changed: the passages cannot be rebuilt
    with pytest.raises(RagloopError, match="content hash differs"):
        rescore_run(kb_home, run.id)
