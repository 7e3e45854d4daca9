"""RAFT examples (Zhang et al., 2024): each question shown with its oracle passage(s) among distractors,
in the serve-time prompt, with a target that quotes the evidence, cites it and ends with the answer.

Stage 6 of the loop: QA items (imported datasets or curated traffic) become (prompt, completion) pairs for
SFT, and preference pairs for DPO. The prompt is rendered by the template serving uses, so the model is
trained on exactly what it sees in production; every target ends in a form ``extract_answer`` reads back,
so evaluation scores exactly what training taught.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from ragloop.datasets.answers import ABSTAIN_ANSWER, LABELS, extract_answer
from ragloop.datasets.qa import QAItem, QAPassage, passage_text_key, prompt_question, unique_passages
from ragloop.errors import ConfigError, RagloopError
from ragloop.generation.citations import CITE, WORD, split_sentences
from ragloop.generation.prompts import PromptTemplate, get_template

POLICIES = ("answer", "abstain")
TARGETS = ("plain", "reasoning")
MAX_QUOTES = 3
BEGIN_QUOTE, END_QUOTE = "##begin_quote##", "##end_quote##"


@dataclass
class RaftConfig:
    """How RAFT examples are built.

    Context:
        n_passages: passages shown per question, oracle(s) and distractors together (k). 0 builds
            closed-book examples (question -> plain answer, no passages): the "domain-specific fine-tuning"
            (DSF) baseline of the RAFT paper, which learns the answers' form and the domain but not reading.
        p_oracle: probability that the oracle passages are shown; otherwise they are replaced by further
            distractors, which teaches the model to answer when retrieval missed (RAFT's P).
    Target:
        policy: what the target says when the oracle was removed. "answer": the answer anyway (RAFT paper:
            the model learns to rely on what it knows); "abstain": ABSTAIN_ANSWER (the model learns to say
            the documents do not contain it, which is what a cited assistant should do).
        target: "plain" (the answer, citing the oracle's [n]) or "reasoning" (verbatim quotes of the
            evidence between ##begin_quote## and ##end_quote##, each citing its [n], then "Answer: ...").
        template: id of the serve-time prompt template (its latest version is used and recorded).
    Reproducibility:
        seed: every random choice is seeded by (seed, item id), so an example does not depend on the order
            or the company of the other items.
    """

    n_passages: int = 5
    p_oracle: float = 0.8
    policy: str = "answer"
    target: str = "reasoning"
    template: str = "cited-answer"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_passages < 0:
            raise ConfigError(f"RAFT n_passages must be 0 (closed book) or more, got {self.n_passages}.")
        if not 0.0 <= self.p_oracle <= 1.0:
            raise ConfigError(f"RAFT p_oracle must be between 0 and 1, got {self.p_oracle}.")
        if self.policy not in POLICIES:
            raise ConfigError(f"RAFT policy must be one of {', '.join(POLICIES)}, got {self.policy!r}.")
        if self.target not in TARGETS:
            raise ConfigError(f"RAFT target must be one of {', '.join(TARGETS)}, got {self.target!r}.")


@dataclass
class RaftExample:
    """One training example. ``prompt`` is the chat (system + user) that serving renders for these
    passages; ``completion`` the assistant turn to learn. ``answer`` is what ``extract_answer`` reads
    from the completion (ABSTAIN_ANSWER's form for abstentions); ``target`` says which kind of completion
    it is: "reasoning", "plain" or "abstain". ``oracle_ids`` are the item's gold passages, shown or not."""

    id: str
    question: str
    passages: list[QAPassage]
    oracle_ids: list[str]
    has_oracle: bool
    answer: str
    target: str
    prompt: list[dict]
    completion: str
    source: str
    group: str
    meta: dict = field(default_factory=dict)


def build_raft_examples(
    items: list[QAItem], config: RaftConfig, random_pool: Sequence[QAPassage] = ()
) -> list[RaftExample]:
    """One example per item. Distractors are the item's own (hard negatives: for live traffic, what the
    retriever really returned), topped up from ``random_pool`` when there are too few."""
    template = get_template(config.template)
    pool = list(random_pool)
    return [_build(item, config, template, pool) for item in items]


def _rng(seed: int, item_id: str, purpose: str) -> random.Random:
    # sha256, not hash(): the same on every run and machine, whatever PYTHONHASHSEED says.
    digest = hashlib.sha256(f"{seed}\x00{item_id}\x00{purpose}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _build(item: QAItem, config: RaftConfig, template: PromptTemplate, pool: list[QAPassage]) -> RaftExample:
    # Separate streams: changing p_oracle flips oracle decisions but leaves every context's sampling as is.
    keep_oracle = bool(item.gold) and _rng(config.seed, item.id, "oracle").random() < config.p_oracle
    rng = _rng(config.seed, item.id, "context")
    gold = unique_passages(item.gold)
    k = config.n_passages
    if k == 0:  # closed book (DSF): nothing shown, so nothing to cite, quote or abstain from
        keep_oracle = False
    oracles = _oracles_to_show(item, gold, limit=max(1, k - 1)) if keep_oracle else []
    passages = oracles + _distractors(item, gold, k - len(oracles), pool, rng)
    rng.shuffle(passages)

    shown_oracles = [(n, p) for n, p in enumerate(passages, start=1) if p in oracles]
    raw = " ".join(item.answers[0].split()) if item.answers else ""
    if k == 0 and raw:
        kind, completion = "plain", raw
    elif not raw or (not keep_oracle and config.policy == "abstain"):
        kind = "abstain"
        completion = ABSTAIN_ANSWER if config.target == "plain" else f"Answer: {ABSTAIN_ANSWER}"
    elif config.target == "plain":
        kind = "plain"
        cites = [n for n, _ in _evidence(item, shown_oracles, raw)] or [n for n, _ in shown_oracles]
        completion = _cited(raw, _unique_ints(cites))
    else:
        kind = "reasoning"
        completion = _reasoning_target(item, shown_oracles, raw)

    return RaftExample(
        id=item.id,
        question=item.question,
        passages=passages,
        oracle_ids=[p.id for p in gold],
        has_oracle=keep_oracle,
        # The answer as the final "Answer:" line states it, read by the rule evaluation uses; the
        # completion around it (quotes, citations, reasoning) must not change what that rule reads.
        answer=extract_answer(f"Answer: {ABSTAIN_ANSWER if kind == 'abstain' else raw}", item.answer_type),
        target=kind,
        prompt=template.render([{"role": "user", "content": prompt_question(item)}], passages),
        completion=completion,
        source=str(item.meta.get("source", "")),
        group=item.group,
        meta={
            **item.meta,
            "answers": list(item.answers),
            "answer_type": item.answer_type,
            "target_style": config.target,
            "policy": config.policy,
            "template": template.id,
            "template_version": template.version,
            "seed": config.seed,
        },
    )


# --- context ----------------------------------------------------------------------------------------


def _unique_ints(values: list[int]) -> list[int]:
    return list(dict.fromkeys(values))


def _oracles_to_show(item: QAItem, gold: list[QAPassage], limit: int) -> list[QAPassage]:
    """All gold passages, unless they would leave no room for a distractor (PubMedQA abstracts have up to
    9 sections): then the ones that best support the answer, in their original order."""
    if len(gold) <= limit:
        return gold
    target = _support_text(item)
    ranked = sorted(range(len(gold)), key=lambda i: (-max(_scores(gold[i].text, target), default=0.0), i))
    keep = set(ranked[:limit])
    return [p for i, p in enumerate(gold) if i in keep]


def _distractors(
    item: QAItem, gold: list[QAPassage], need: int, pool: list[QAPassage], rng: random.Random
) -> list[QAPassage]:
    """``need`` passages that are not the oracle: the item's own first, then random ones from the pool.
    A pool passage with an oracle's text under another id is still the oracle, so texts are checked too."""
    banned_ids = {p.id for p in gold}
    banned_texts = {passage_text_key(p.text) for p in gold}

    def allowed(p: QAPassage) -> bool:
        return p.id not in banned_ids and passage_text_key(p.text) not in banned_texts

    own = [p for p in unique_passages(item.distractors) if allowed(p)]
    chosen = rng.sample(own, min(need, len(own)))
    banned_ids.update(p.id for p in chosen)
    tries = 0
    # Rejection sampling keeps this O(need) on a large pool; a small or mostly banned pool is scanned.
    while len(chosen) < need and pool and tries < 20 * need:
        tries += 1
        p = pool[rng.randrange(len(pool))]
        if allowed(p):
            chosen.append(p)
            banned_ids.add(p.id)
    if len(chosen) < need and pool:
        rest = [p for p in unique_passages(pool) if allowed(p)]
        chosen += rng.sample(rest, min(need - len(chosen), len(rest)))
    return chosen


# --- targets ----------------------------------------------------------------------------------------


def _words(text: str) -> set[str]:
    return {w.lower() for w in WORD.findall(text) if len(w) > 2}


def _scores(text: str, target: str) -> list[float]:
    """Per sentence of ``text``: words shared with ``target``, damped by sentence length (as in
    ``citations.best_span``) so long sentences do not win by size alone."""
    t = _words(target)
    out = []
    for s, e in split_sentences(text):
        words = _words(text[s:e])
        out.append(len(words & t) / (len(words) ** 0.5 or 1.0))
    return out


def _support_text(item: QAItem) -> str:
    """What evidence must support: a label is only "yes"/"no", so its reasoning (PubMedQA's long answer)
    or failing that the question stands in; otherwise the answer itself."""
    if item.answer_type == "label":
        return item.reasoning or item.question
    return item.answers[0] if item.answers else item.question


def _answer_quote(text: str, answer: str) -> str | None:
    """The sentence(s) of ``text`` covering the first occurrence of ``answer``, verbatim."""
    start = text.lower().find(answer.lower())
    if start < 0 or not answer:
        return None
    end = start + len(answer)
    spans = [(s, e) for s, e in split_sentences(text) if s < end and e > start]
    if not spans:
        return text[start:end]
    return text[spans[0][0] : spans[-1][1]].strip()


def _evidence(item: QAItem, shown: list[tuple[int, QAPassage]], answer: str) -> list[tuple[int, str]]:
    """(passage number, verbatim quote) pairs that support the answer: the dataset's annotated supporting
    sentences when it has them (HotpotQA), else the sentences containing the answer, else the sentences
    that share most words with it (with the reasoning, for labels)."""
    supporting = item.meta.get("supporting_sentences") or {}
    annotated = [(n, s) for n, p in shown for s in supporting.get(p.id, []) if s and s in p.text]
    if annotated:
        return annotated[:MAX_QUOTES]
    if item.answer_type != "label":
        found = [(n, q) for n, p in shown if (q := _answer_quote(p.text, answer))]
        if found:
            return found[:2]
    target = _support_text(item)
    scored = []
    for n, p in shown:
        for score, (s, e) in zip(_scores(p.text, target), split_sentences(p.text), strict=True):
            if score > 0:
                scored.append((-score, n, s, p.text[s:e].strip()))
    best = sorted(scored)[:2]
    return [(n, quote) for _, n, _, quote in sorted(best, key=lambda t: (t[1], t[2]))]


def _cited(answer: str, numbers: list[int]) -> str:
    """ "answer [1] [3]", the citation before a final full stop as the assistant writes it."""
    if not numbers:
        return answer
    cites = " ".join(f"[{n}]" for n in numbers)
    if answer[-1] in ".!?" and len(answer) > 1:
        return f"{answer[:-1]} {cites}{answer[-1]}"
    return f"{answer} {cites}"


def _quote_line(n: int, quote: str) -> str:
    return f"{BEGIN_QUOTE}{quote}{END_QUOTE} [{n}]"


def _reasoning_target(item: QAItem, shown: list[tuple[int, QAPassage]], answer: str) -> str:
    """Quotes of the evidence (none when the oracle was removed), the item's reasoning if it has one,
    then the answer line. With an oracle but no quotable sentence, the answer line cites the oracle."""
    lines = []
    evidence = _evidence(item, shown, answer) if shown else []
    lines += [_quote_line(n, quote) for n, quote in evidence]
    if item.reasoning:
        # Citation-like brackets in the source text would point at the wrong shown passage.
        lines.append(" ".join(CITE.sub("", item.reasoning).split()))
    final = f"Answer: {answer}"
    if shown and not evidence:
        final = f"Answer: {_cited(answer, [n for n, _ in shown])}"
    return "\n".join([*lines, final])


# --- preference pairs -------------------------------------------------------------------------------


def to_dpo_pair(example: RaftExample, rejected: str) -> dict:
    """A preference pair on the same context, in TRL's conversational format: the example's prompt, its
    completion as chosen, ``rejected`` as the answer to push away from."""
    if not rejected.strip() or rejected.strip() == example.completion.strip():
        raise RagloopError(f"Example {example.id}: the rejected answer is empty or equal to the chosen one.")
    return {
        "prompt": example.prompt,
        "chosen": [{"role": "assistant", "content": example.completion}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def _api_call_line(text: str) -> tuple[str, str] | None:
    for line in text.splitlines():
        if line.startswith("api_call:") and line[9:].strip():
            return line.strip(), line[9:].strip()
    return None


def misled_answer(example: RaftExample) -> str:
    """A deterministic wrong answer, in the example's own target style, that trusts a distractor: the
    distractor sentence closest to the question, quoted and cited (for API questions, the distractor's
    API call; for labels, the opposite label). "" when no distractor is shown. Used as the rejected answer
    of a DPO pair when no reviewer gave a thumbs-down one."""
    answer_type = example.meta.get("answer_type", "span")
    oracle = set(example.oracle_ids)
    q = _words(example.question)
    candidates = []
    for n, p in enumerate(example.passages, start=1):
        if p.id in oracle:
            continue
        if answer_type == "api_call":
            if found := _api_call_line(p.text):
                candidates.append((-len(_words(p.text) & q), n, 0, *found))
            continue
        for i, (s, e) in enumerate(split_sentences(p.text)):
            sentence = p.text[s:e].strip()
            words = _words(sentence)
            candidates.append((-len(words & q) / (len(words) ** 0.5 or 1.0), n, i, sentence, sentence))
    for _, n, _, quote, claim in sorted(candidates):
        if answer_type == "label":
            claim = next(label for label in LABELS if label != example.answer)
        if example.meta.get("target_style", "reasoning") == "plain":
            wrong = _cited(" ".join(claim.split()), [n])
        else:
            wrong = f"{_quote_line(n, quote)}\nAnswer: {' '.join(claim.split())}"
        if extract_answer(wrong, answer_type) != example.answer:
            return wrong
    return ""
