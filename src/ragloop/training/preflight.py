"""Loss-mask preflight: tokenize every example exactly as it will be trained, and refuse to train on a
mask that would teach the wrong thing.

Example format (``ragloop.datasets.build.load_examples``): ``prompt`` is the chat messages serving
showed (system + user turn with the numbered passages), ``completion`` the target answer, ``passages``
the passages rendered into the prompt (``text`` is found verbatim in it), ``id`` a stable id.

What is trained is defined by serving, not by the template's quirks: the prompt is tokenized as the
server tokenizes it (chat template with the generation prompt), and everything the model then has to
generate, the answer up to and including the template's end-of-turn token, is trained. Two silent
failures of chat templates are caught here rather than after an hour of training: a template that puts no
end-of-turn token after the answer (the model never learns to stop), and a template that renders the
prompt differently once an answer follows (the model learns on a context it never sees). Over-long
examples are cut or dropped by an explicit policy and every one is reported: TRL silently truncates
answers past ``max_length`` and drops the examples left without a trained token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ragloop.errors import RagloopError
from ragloop.generation.citations import CITE

OPEN, CLOSE = "«", "»"  # marks trained tokens in the rendered example


@dataclass
class PreflightReport:
    """What training would see. ``truncated`` / ``dropped`` hold example ids (``details`` says why for
    each); ``problems`` are fatal (``ok`` is False), ``warnings`` are not. ``features`` are the kept
    examples tokenized for training: ``{"id", "input_ids", "labels"}`` with -100 on untrained tokens."""

    n_examples: int
    n_trained_tokens: int
    truncated: list[str]
    dropped: list[str]
    rendered: str
    problems: list[str]
    ok: bool
    warnings: list[str] = field(default_factory=list)
    details: dict[str, str] = field(default_factory=dict)
    n_tokens: int = 0
    features: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def summary(self) -> str:
        """A human-readable report: counts, every truncated/dropped example, problems, the marked example."""
        kept = self.n_examples - len(self.dropped)
        lines = [
            f"preflight: {kept}/{self.n_examples} examples kept, {self.n_tokens} tokens of which "
            f"{self.n_trained_tokens} trained ({OPEN}marked{CLOSE} below)",
        ]
        for label, ids in (("truncated", self.truncated), ("dropped", self.dropped)):
            if ids:
                lines.append(f"{label} ({len(ids)}):")
                lines += [f"  {i}: {self.details.get(i, '')}" for i in ids]
        lines += [f"PROBLEM: {p}" for p in self.problems]
        lines += [f"warning: {w}" for w in self.warnings]
        if self.rendered:
            lines += ["example as trained:", self.rendered]
        return "\n".join(lines)

    def raise_for_problems(self) -> None:
        """Raise ``RagloopError`` with the problems and the marked example when training must not start."""
        if not self.ok:
            raise RagloopError(
                "Preflight failed, nothing was trained:\n"
                + "\n".join(f"- {p}" for p in self.problems)
                + (
                    f"\nOne example as it would be trained ({OPEN}trained{CLOSE}):\n{self.rendered}"
                    if self.rendered
                    else ""
                )
            )


@dataclass
class Fitted:
    """One example fitted to ``max_length``: the (possibly cut) prompt and its tokens, the trained answer
    tokens per completion, or a ``problem`` (fatal: template) / ``dropped`` reason."""

    prompt: list[dict]
    prompt_ids: list[int] = field(default_factory=list)
    answers: list[list[int]] = field(default_factory=list)
    cut: list[int] = field(default_factory=list)  # 1-based numbers of the passages removed
    problem: str | None = None
    dropped: str | None = None
    rendered: str = ""


def special_token_ids(tokenizer: Any) -> set[int]:
    """Ids of the tokenizer's special tokens (end-of-turn candidates)."""
    ids = set(tokenizer.all_special_ids)
    ids |= {
        i
        for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items()
        if getattr(tok, "special", False)
    }
    return ids


def encode_answer(tokenizer: Any, prompt: list[dict], completion: str, special: set[int]) -> Fitted:
    """Tokenize ``prompt`` as serving does and the answer as the model must generate it: up to and
    including the first special token after the answer's text (the template's end-of-turn)."""
    out = Fitted(prompt=prompt)
    gen_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(
        [*prompt, {"role": "assistant", "content": completion}], tokenize=False
    )
    out.rendered = full_text
    if not full_text.startswith(gen_text):
        i = next(
            (k for k, (a, b) in enumerate(zip(gen_text, full_text, strict=False)) if a != b), len(gen_text)
        )
        out.problem = (
            "the chat template renders the prompt differently once an answer follows (serving ends the prompt "
            f"with {gen_text[max(0, i - 30) : i + 30]!r}, training would show {full_text[max(0, i - 30) : i + 30]!r}): "
            "the model would learn on a context it never sees. Fix the template's generation prompt."
        )
        return out
    content = completion.strip()
    if not content:
        out.problem = "empty answer: there is nothing to learn but the end-of-turn token"
        return out
    rest = full_text[len(gen_text) :]
    start = rest.find(content)
    if start < 0:
        out.problem = "the answer does not appear verbatim in the rendered conversation (the chat template rewrites assistant turns)"
        return out
    content_end = start + len(content)
    enc = tokenizer(rest, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    eot = next(
        (
            i
            for i, (t, (s, _)) in enumerate(zip(ids, offsets, strict=True))
            if s >= content_end and t in special
        ),
        None,
    )
    out.prompt_ids = tokenizer(gen_text, add_special_tokens=False)["input_ids"]
    if eot is None:
        out.answers = [[t for t, (s, _) in zip(ids, offsets, strict=True) if s < content_end]]
        out.problem = (
            "the chat template puts no end-of-turn token after the assistant's answer, so the model would "
            "never be trained to stop. Use a template that closes the assistant turn with its end token "
            "(for ChatML: <|im_end|>)."
        )
        return out
    out.answers = [ids[: eot + 1]]
    return out


def cited_numbers(text: str) -> set[int]:
    """Passage numbers an answer cites: [1], [2, 3]."""
    return {int(n) for m in CITE.finditer(text) for n in re.split(r"[,;\s]+", m.group(1)) if n}


def _remove_passage(prompt: list[dict], text: str) -> list[dict] | None:
    """The prompt without the passage block (its header line + text) holding ``text``, or None when the
    text is not found verbatim."""
    text = text.strip()
    for m_idx in range(len(prompt) - 1, -1, -1):
        content = prompt[m_idx].get("content") or ""
        idx = content.find(text) if text else -1
        if idx < 0:
            continue
        start = content.rfind("\n", 0, max(idx - 1, 0)) + 1 if idx > 0 and content[idx - 1] == "\n" else idx
        end = idx + len(text)
        if content[end : end + 2] == "\n\n":
            end += 2
        elif content[max(start - 2, 0) : start] == "\n\n":
            start -= 2
        new = [dict(m) for m in prompt]
        new[m_idx]["content"] = content[:start] + content[end:]
        return new
    return None


def fit_example(
    tokenizer: Any,
    example: dict,
    completions: list[str],
    max_length: int,
    truncation: str,
    special: set[int] | None = None,
) -> Fitted:
    """Fit one example (and all its ``completions``, e.g. chosen and rejected) into ``max_length``.

    ``left-context``: cut whole passages from the prompt, distractors only (never a passage an answer
    cites or a gold one, never a token of an answer), from the last; each cut re-renders the prompt, so the cut example is exactly what
    serving would have shown with fewer passages. An example that does not fit even so is dropped."""
    special = special if special is not None else special_token_ids(tokenizer)
    prompt = example["prompt"]
    cut: list[int] = []
    passages = list(example.get("passages") or [])
    oracle = set(example.get("oracle_ids") or [])
    cited = set().union(*(cited_numbers(c) for c in completions))
    cited |= {n for n, p in enumerate(passages, start=1) if p.get("id") in oracle}
    spare = [n for n in range(len(passages), 0, -1) if n not in cited]
    while True:
        parts = [encode_answer(tokenizer, prompt, c, special) for c in completions]
        bad = next((p for p in parts if p.problem), None)
        if bad is not None:
            bad.cut = cut
            return bad
        fitted = Fitted(
            prompt=prompt, prompt_ids=parts[0].prompt_ids, answers=[p.answers[0] for p in parts], cut=cut
        )
        need = len(fitted.prompt_ids) + max(len(a) for a in fitted.answers)
        if need <= max_length:
            return fitted
        if truncation != "left-context":
            fitted.dropped = f"{need} tokens > max_length {max_length} (truncation={truncation!r})"
            return fitted
        cut_prompt = None
        while spare and cut_prompt is None:
            n = spare.pop(0)
            cut_prompt = _remove_passage(prompt, str(passages[n - 1].get("text", "")))
            if cut_prompt is not None:
                cut.append(n)
        if cut_prompt is None:
            kept_note = f"; its cited/gold passages {sorted(cited)} are kept" if cited else ""
            fitted.dropped = (
                f"{need} tokens > max_length {max_length} even after cutting passages {sorted(cut) or 'none'}"
                f"{kept_note}; the answer is never cut"
            )
            return fitted
        prompt = cut_prompt


def render_marked(tokenizer: Any, input_ids: list[int], labels: list[int]) -> str:
    """Decode a sequence with every run of trained tokens wrapped in «»."""
    out, run, trained = [], [], None
    for tok, lab in [*zip(input_ids, labels, strict=True), (None, None)]:
        is_trained = lab is not None and lab != -100
        if tok is None or (trained is not None and is_trained != trained):
            text = tokenizer.decode(run, skip_special_tokens=False)
            out.append(f"{OPEN}{text}{CLOSE}" if trained else text)
            run = []
        if tok is not None:
            run.append(tok)
            trained = is_trained
    return "".join(out)


def _group(messages: dict[str, list[str]]) -> list[str]:
    """One line per distinct problem, naming the examples it hits (a template bug hits all of them)."""
    lines = []
    for text, ids in messages.items():
        shown = ", ".join(ids[:5]) + (f", … ({len(ids)} examples)" if len(ids) > 5 else "")
        lines.append(f"{text} [{shown}]")
    return lines


def preflight(tokenizer: Any, examples: list[dict], max_length: int, truncation: str) -> PreflightReport:
    """Tokenize and mask every example as training will; report what is cut, dropped or broken.

    Pure computation (no I/O): the trainer prints ``report.summary()`` and calls
    ``report.raise_for_problems()`` before touching the output folder."""
    special = special_token_ids(tokenizer)
    eos = getattr(tokenizer, "eos_token_id", None)
    problems: dict[str, list[str]] = {}
    truncated, dropped, details, features = [], [], {}, []
    eot_tokens: set[int] = set()
    first_broken: Fitted | None = None
    for i, ex in enumerate(examples):
        ex_id = str(ex.get("id") or f"#{i}")
        fitted = fit_example(tokenizer, ex, [ex["completion"]], max_length, truncation, special)
        if fitted.problem:
            problems.setdefault(fitted.problem, []).append(ex_id)
            first_broken = first_broken or fitted
            continue
        if fitted.dropped:
            dropped.append(ex_id)
            details[ex_id] = fitted.dropped
            continue
        answer = fitted.answers[0]
        eot_tokens.add(answer[-1])
        if fitted.cut:
            truncated.append(ex_id)
            details[ex_id] = f"cut distractor passage(s) {sorted(fitted.cut)} to fit max_length {max_length}"
        features.append(
            {
                "id": ex_id,
                "input_ids": fitted.prompt_ids + answer,
                "labels": [-100] * len(fitted.prompt_ids) + answer,
            }
        )
    problem_lines = _group(problems)
    if examples and not features and not problems:
        problem_lines.append(
            f"every example was dropped: raise max_length (now {max_length}) or shorten the prompts"
        )
    if not examples:
        problem_lines.append("no examples to train on")
    warnings = []
    if eos is not None and eot_tokens and eot_tokens != {eos}:
        names = ", ".join(repr(tokenizer.convert_ids_to_tokens(t)) for t in sorted(eot_tokens))
        warnings.append(
            f"the answers end with {names}, not the tokenizer's eos token {tokenizer.eos_token!r}: make sure "
            "generation stops on it"
        )
    if features:
        shortest = min(features, key=lambda f: len(f["input_ids"]))
        rendered = render_marked(tokenizer, shortest["input_ids"], shortest["labels"])
    elif first_broken is not None and first_broken.prompt_ids:
        answer = first_broken.answers[0] if first_broken.answers else []
        rendered = render_marked(
            tokenizer, first_broken.prompt_ids + answer, [-100] * len(first_broken.prompt_ids) + answer
        )
    else:
        rendered = first_broken.rendered if first_broken is not None else ""
    return PreflightReport(
        n_examples=len(examples),
        n_trained_tokens=sum(sum(1 for x in f["labels"] if x != -100) for f in features),
        truncated=truncated,
        dropped=dropped,
        rendered=rendered,
        problems=problem_lines,
        ok=not problem_lines,
        warnings=warnings,
        details=details,
        n_tokens=sum(len(f["input_ids"]) for f in features),
        features=features,
    )
