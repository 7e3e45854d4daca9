"""The RAFT comparison at our scale (issue 5, item 5): base + RAG, DSF, DSF + RAG, RAFT and RAFT without
reasoning on HotpotQA, PubMedQA, PolicyQA and APIBench TorchHub, each under `distractors` and `no-gold`.

Everything goes through the CLI a user has (`ragloop dataset build`, `ragloop train sft`, `ragloop eval`),
in one project home, so every model version, dataset version and eval run stays inspectable afterwards
(`ragloop models list`, `ragloop eval list`, `ragloop eval compare A B`).

The plan is a list of steps in priority order (the numbers that answer the issue's targets first). Each step
is skipped when its result is already stored: a finished model version with the step's name, an eval run
with the same settings (`ragloop eval --reuse`). A training job that was interrupted (session over, crash,
kill -9) is resumed from its last checkpoint. So the same command, run again in a later working session,
continues where the last one stopped:

    python bench/raft.py [--home DIR] [--only hotpotqa,pubmedqa] [--until-minutes 120]   # or: make raft
    python bench/raft.py --report          # only write the tables and the plot from what is stored

Budget (2-core CPU): 100 evaluation questions per set (seeded sample), at most 2 epochs, distractor counts
{0, 2, 4, 8} for the robustness curves. Each set's training questions are disjoint from its evaluation
questions: HotpotQA train -> dev; PubMedQA 400 / 100 by question; PolicyQA's dev split divided by policy
(website); APIBench TorchHub's train split divided by instruction (as Gorilla's own train/eval are: the same
APIs, other requests).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import DATA, OUT, table  # noqa: E402

RAGLOOP = str(Path(sys.executable).with_name("ragloop"))
LIMIT = 100  # evaluation questions per set
DOCS = Path(__file__).resolve().parents[1] / "docs"


@dataclass(frozen=True)
class SetSpec:
    """One benchmark set: where its train/eval questions come from and how it is scored and budgeted."""

    name: str
    fmt: str
    k: int  # distractors shown under `distractors` and `no-gold`
    n_train: int  # training questions (a seeded sample of the train side)
    train_passages: int  # RAFT n_passages when training (oracle + distractors)
    new_plain: int  # max new tokens for plain answers (base, DSF, RAFT without reasoning)
    new_reasoning: int  # max new tokens for quoted-evidence answers
    metric: str  # headline metric
    epochs: float = 1.0
    lr: float = 5e-4
    robustness: bool = False  # distractors 0, 2, 4, 8 for the robustness plot
    abstain: bool = False  # also train an abstain-policy RAFT model
    at_k: int = 0  # >0: also train RAFT w/o reasoning on contexts of this many passages (the eval's own size)
    lead: tuple[str, ...] = ("raft",)  # variants trained and evaluated first (the likely best model)
    shared_documents: bool = False  # eval questions use the training documents (APIBench: the same APIs)


SETS = {
    "hotpotqa": SetSpec(
        "hotpotqa",
        "hotpotqa",
        8,
        300,
        4,
        48,
        160,
        "f1",
        robustness=True,
        abstain=True,
        at_k=10,  # 2 gold paragraphs + the 8 distractors of the evaluation
        lead=("raft-plain", "raft"),
    ),
    "pubmedqa": SetSpec("pubmedqa", "pubmedqa", 4, 240, 4, 32, 192, "accuracy"),
    "policyqa": SetSpec("policyqa", "squad", 4, 240, 4, 64, 128, "f1", lead=("raft-plain",)),
    "apibench": SetSpec(
        "apibench", "apibench", 4, 160, 3, 96, 160, "api_match", lead=("raft-plain",), shared_documents=True
    ),
}


# --- the data: train / eval files, written once, deterministically --------------------------------------------


@functools.cache  # every plan and report step asks; the files are read and split once per process
def prepare_data(spec: SetSpec, work: Path) -> tuple[Path, Path]:
    """(train file, eval file) for a set, in the set's own format, so `ragloop` reads them like any user file."""
    out = work / "data"
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    if spec.name == "hotpotqa":
        src = DATA / "hotpotqa_distractor"
        rows = (src / "train.jsonl").read_text().splitlines()
        rng.shuffle(rows)
        train = out / "hotpotqa-train.jsonl"
        _write_once(train, "\n".join(rows[: spec.n_train]) + "\n")
        return train, src / "dev.jsonl"
    if spec.name == "pubmedqa":
        data = json.loads((DATA / "pubmedqa" / "pqal_train.json").read_text())
        ids = sorted(data)
        rng.shuffle(ids)
        train_ids, eval_ids = ids[:400][: spec.n_train], ids[400:500]
        train, evalf = out / "pubmedqa-train.json", out / "pubmedqa-eval.json"
        _write_once(train, json.dumps({i: data[i] for i in train_ids}))
        _write_once(evalf, json.dumps({i: data[i] for i in eval_ids}))
        return train, evalf
    if spec.name == "policyqa":
        data = json.loads((DATA / "policyqa" / "dev.json").read_text())
        docs = sorted(data["data"], key=lambda d: d["title"])
        rng.shuffle(docs)
        cut = int(len(docs) * 0.7)
        train_docs, eval_docs = docs[:cut], docs[cut:]
        # A sample of the training questions, kept in their documents (the importer reads SQuAD's nesting).
        qids = [qa["id"] for d in train_docs for p in d["paragraphs"] for qa in p["qas"]]
        keep = set(random.Random(1).sample(qids, min(spec.n_train, len(qids))))
        sampled = []
        for d in train_docs:
            paras = [{**p, "qas": [qa for qa in p["qas"] if qa["id"] in keep]} for p in d["paragraphs"]]
            sampled.append({**d, "paragraphs": paras})
        train, evalf = out / "policyqa-train.json", out / "policyqa-eval.json"
        _write_once(train, json.dumps({"version": data.get("version", ""), "data": sampled}))
        _write_once(evalf, json.dumps({"version": data.get("version", ""), "data": eval_docs}))
        return train, evalf
    if spec.name == "apibench":
        rows = (DATA / "apibench_torchhub" / "torchhub_train.json").read_text().splitlines()
        rows = [r for r in rows if r.strip()]
        rng.shuffle(rows)
        cut = int(len(rows) * 0.8)
        train, evalf = out / "apibench-train.json", out / "apibench-eval.json"
        _write_once(train, "\n".join(rows[:cut][: spec.n_train]) + "\n")
        _write_once(evalf, "\n".join(rows[cut:]) + "\n")
        return train, evalf
    raise SystemExit(f"unknown set {spec.name}")


def _write_once(path: Path, text: str) -> None:
    if not path.exists():
        path.write_text(text)


# --- the plan ----------------------------------------------------------------------------------------------------


@dataclass
class Variant:
    """A model of the comparison: how its training data is built (None: the base model, untrained)."""

    key: str  # base | dsf | raft | raft-plain | raft-abstain | raft-plain-k
    label: str
    n_passages: int | None = None
    target: str = "reasoning"
    policy: str = "answer"
    train_sets: tuple[str, ...] = ()  # extra `ragloop train sft --set` options

    def model_name(self, spec: SetSpec) -> str:
        return "base" if self.key == "base" else f"{self.key}-{spec.name}"

    def max_new(self, spec: SetSpec) -> int:
        return spec.new_reasoning if self.n_passages and self.target == "reasoning" else spec.new_plain


def variants(spec: SetSpec) -> dict[str, Variant]:
    out = {
        "base": Variant("base", "base + RAG"),
        "dsf": Variant("dsf", "DSF", n_passages=0, target="plain"),
        "raft": Variant("raft", "RAFT", n_passages=spec.train_passages),
        "raft-plain": Variant(
            "raft-plain", "RAFT w/o reasoning", n_passages=spec.train_passages, target="plain"
        ),
    }
    if spec.abstain:  # plain targets: at 135M they beat quoted reasoning (docs/results.md)
        out["raft-abstain"] = Variant("raft-abstain", "RAFT w/o reasoning (abstain policy)",
                                      n_passages=spec.train_passages, target="plain", policy="abstain")  # fmt: skip
    if spec.at_k:
        out["raft-plain-k"] = Variant("raft-plain-k", f"RAFT w/o reasoning, trained on {spec.at_k} passages",
                                      n_passages=spec.at_k, target="plain",
                                      # room for the whole context (~1,100-1,600 tokens), and about as many
                                      # examples per optimizer step as the 4-passage models had
                                      train_sets=("max_length=2048", "gradient_accumulation_steps=2"))  # fmt: skip
    return out


@dataclass
class Step:
    kind: str  # train | eval
    spec: SetSpec
    variant: Variant
    condition: str = ""
    k: int = 0
    args: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        if self.kind == "train":
            return f"train {self.variant.model_name(self.spec)}"
        return f"eval {self.variant.model_name(self.spec)} on {self.spec.name} {self.condition} k={self.k}"


def plan(specs: list[SetSpec]) -> list[Step]:
    """Steps in priority order: each set's base and RAFT first (the issue's targets), then the whole matrix
    of the set with the most to show (the first), then the matrices of the others, robustness points last."""
    first: list[Step] = []
    matrix: list[list[Step]] = []
    extra: list[Step] = []
    for spec in specs:
        v = variants(spec)

        def ev(name: str, condition: str, k: int, spec: SetSpec = spec, v: dict = v) -> Step:
            return Step("eval", spec, v[name], condition, k)

        first.append(ev("base", "distractors", spec.k))
        for lead in spec.lead:
            first += [Step("train", spec, v[lead]), ev(lead, "distractors", spec.k)]
        # The targets still open after the first session: abstention, then training at the eval's k.
        if spec.abstain:
            first += [Step("train", spec, v["raft-abstain"]), ev("raft-abstain", "distractors", spec.k),
                      ev("raft-abstain", "no-gold", spec.k)]  # fmt: skip
        if spec.at_k:
            first += [Step("train", spec, v["raft-plain-k"]), ev("raft-plain-k", "distractors", spec.k),
                      ev("raft-plain-k", "oracle", 0), ev("raft-plain-k", "no-gold", spec.k)]  # fmt: skip
        rest = [e for lead in spec.lead[:1] for e in (ev(lead, "oracle", 0), ev(lead, "no-gold", spec.k))]
        rest += [Step("train", spec, v["dsf"]), ev("dsf", "closed-book", 0), ev("base", "no-gold", spec.k),
                 *[e for lead in spec.lead[1:] for e in (ev(lead, "oracle", 0), ev(lead, "no-gold", spec.k))],
                Step("train", spec, v["raft-plain"]), ev("raft-plain", "distractors", spec.k),
                Step("train", spec, v["raft"]), ev("raft", "distractors", spec.k),
                ev("dsf", "distractors", spec.k)]  # fmt: skip
        rest = [s for s in rest if not (s.variant.key in spec.lead and s.condition in ("", "distractors"))]
        rest += [
            ev("raft", "oracle", 0),
            ev("raft", "no-gold", spec.k),
            ev("raft-plain", "no-gold", spec.k),
            ev("dsf", "no-gold", spec.k),
        ]
        rest = [s for s in {s.title: s for s in rest}.values() if s.title not in {f.title for f in first}]
        # (each step once, at its first place)
        matrix.append(rest)
        if spec.robustness:  # k = 0 is the oracle condition (gold only)
            extra += [ev(m, "distractors", k) for m in ("raft", "base", "raft-plain") for k in (2, 4)]
            extra += [ev("base", "oracle", 0), ev("raft-plain", "oracle", 0)]
    return first + [s for steps in matrix for s in steps] + extra


# --- running a step --------------------------------------------------------------------------------------------


def sh(args: list[str], home: Path, log: Path) -> str:
    cmd = [RAGLOOP, *args, "--home", str(home)]
    print("$ ragloop " + " ".join(args), flush=True)
    with log.open("a") as fh:
        fh.write("$ ragloop " + " ".join(args) + "\n")
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    with log.open("a") as fh:
        fh.write(out.stdout[-4000:] + out.stderr[-4000:] + "\n")
    if out.returncode != 0:
        raise RuntimeError(f"ragloop {' '.join(args)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return out.stdout


def model_version(home: Path, name: str) -> str | None:
    """The newest finished version trained under ``name`` (versions are named NAME-vN)."""
    from ragloop.config import load_settings
    from ragloop.store.aliases import list_models
    from ragloop.store.db import session_scope

    settings = load_settings(home)
    with session_scope(settings.db_url) as s:
        for mv, _ in list_models(s):
            if mv.id.startswith(f"{name}-v") and mv.id[len(name) + 2 :].isdigit():
                return mv.id
    return None


def run_train(step: Step, home: Path, work: Path, log: Path) -> None:
    from ragloop.config import load_settings
    from ragloop.training import jobs

    spec, var = step.spec, step.variant
    name = var.model_name(spec)
    if model_version(home, name):
        return
    settings = load_settings(home)
    # A job of this name from an earlier session: resume it from its checkpoint rather than start over.
    for job in jobs.list_jobs(settings, limit=200):
        if (job.config or {}).get("name") == name and job.status in ("interrupted", "failed", "cancelled"):
            sh(["jobs", "resume", job.id], home, log)
            jobs.ensure_worker(settings)
            _wait_job(settings, job.id)
            return
        if (job.config or {}).get("name") == name and job.status in ("queued", "running"):
            jobs.ensure_worker(settings)
            _wait_job(settings, job.id)
            return
    train_file, eval_file = prepare_data(spec, work)
    policy = work / f"policy-{name}.json"
    policy.write_text(json.dumps({
        "name": name, "version": 1,
        "description": f"{var.label} on {spec.name}: public benchmark data, nothing to anonymise or filter",
        "filters": [{"length": {}}, {"dedupe": {"threshold": 0.95}}],
        "pii": {"enabled": False},
        "split": {"train": 0.95, "val": 0.05, "test": 0.0},
        "raft": {"n_passages": var.n_passages, "p_oracle": 0.8, "policy": var.policy, "target": var.target},
    }, indent=1))  # fmt: skip
    out = sh(["dataset", "build", "--no-interactions", "--import", f"{spec.fmt}:{train_file}",
              "--eval-set", str(eval_file), "--policy", str(policy), "--name", name,
              *(["--shared-documents"] if spec.shared_documents else [])], home, log)  # fmt: skip
    dataset = next(w for w in out.replace("\n", " ").split() if w.startswith("ds-")).strip(".,:;'\"")
    sh(["train", "sft", "--dataset", dataset, "--name", name, "--set", f"epochs={spec.epochs}",
        "--set", f"learning_rate={spec.lr}", *[a for x in var.train_sets for a in ("--set", x)]], home, log)  # fmt: skip
    job = next(j for j in jobs.list_jobs(settings, limit=20) if (j.config or {}).get("name") == name)
    _wait_job(settings, job.id)


def _wait_job(settings, job_id: str) -> None:  # type: ignore[no-untyped-def]
    from ragloop.training import jobs

    while True:
        job = jobs.get_job(settings, job_id)
        if job.status == "succeeded":
            return
        if job.status in ("failed", "cancelled", "interrupted"):
            raise RuntimeError(f"training job {job_id} {job.status}: {job.error}")
        time.sleep(10)


def eval_config(step: Step, home: Path, work: Path):  # type: ignore[no-untyped-def]
    """The step's evaluation as `ragloop eval` takes it; None while its model is not trained yet."""
    from ragloop.evaluation.run import EvalConfig

    spec, var = step.spec, step.variant
    name = var.model_name(spec)
    model = name if name == "base" else model_version(home, name)
    if model is None:
        return None
    _, eval_file = prepare_data(spec, work)
    return EvalConfig(data=str(eval_file), model=model, condition=step.condition, n_distractors=step.k,
                      limit=LIMIT, max_new_tokens=var.max_new(spec))  # fmt: skip


def run_eval(step: Step, home: Path, work: Path, log: Path) -> None:
    cfg = eval_config(step, home, work)
    if cfg is None:
        print(f"  skipped: {step.variant.model_name(step.spec)} is not trained yet", flush=True)
        return
    sh(["eval", "--model", cfg.model, "--data", cfg.data, "--condition", cfg.condition,
        "--distractors", str(cfg.n_distractors), "--limit", str(cfg.limit),
        "--max-new-tokens", str(cfg.max_new_tokens), "--reuse", "--json"], home, log)  # fmt: skip


# --- the report ----------------------------------------------------------------------------------------------


def stored_run(step: Step, home: Path, work: Path):  # type: ignore[no-untyped-def]
    """The stored run of an eval step (what `ragloop eval --reuse` would print), or None."""
    from ragloop.config import load_settings
    from ragloop.evaluation.run import reusable_run

    cfg = eval_config(step, home, work)
    return None if cfg is None else reusable_run(load_settings(home), cfg)


def report(specs: list[SetSpec], home: Path, work: Path) -> str:
    cols = {"f1": "F1", "em": "EM", "accuracy": "acc", "macro_f1": "macro-F1", "api_match": "AST match",
            "abstain_rate": "abstains", "citation_recall": "cite recall", "grounded": "grounded"}  # fmt: skip
    parts = []
    for spec in specs:
        v = variants(spec)
        rows = []
        cells = [("base", "distractors"), ("base", "no-gold"), ("dsf", "closed-book"), ("dsf", "distractors"),
                 ("dsf", "no-gold"), ("raft", "oracle"), ("raft", "distractors"), ("raft", "no-gold"), ("raft-plain", "oracle"),
                 ("raft-plain", "distractors"), ("raft-plain", "no-gold"), ("raft-abstain", "distractors"),
                 ("raft-abstain", "no-gold"), ("raft-plain-k", "oracle"), ("raft-plain-k", "distractors"),
                 ("raft-plain-k", "no-gold")]  # fmt: skip
        metrics = [spec.metric, *(["em"] if spec.metric == "f1" else []),
                   *(["macro_f1"] if spec.metric == "accuracy" else []), "abstain_rate", "citation_recall"]  # fmt: skip
        for key, condition in cells:
            if key not in v:
                continue
            var, k = v[key], _k(spec, condition)
            run = _cell(spec, home, work, key, condition)
            policy = "—" if key in ("base",) else ("answer" if key == "dsf" else var.policy)
            if run is None:
                rows.append([var.label, condition, k, policy, *["not run yet"] + [""] * len(metrics), ""])
                continue
            m = run.metrics or {}
            vals = [_pct(m.get(x)) for x in metrics]
            rows.append([var.label, condition, k, policy, *vals, run.n_examples,
                         f"{run.id[:8]} ({run.model_version})"])  # fmt: skip
        headers = [
            "model",
            "condition",
            "k",
            "policy",
            *[cols.get(x, x) for x in metrics],
            "n",
            "run (version)",
        ]
        parts.append(f"### {spec.name}\n\n" + table(headers, rows))
    return "\n\n".join(parts)


def _pct(x: object) -> object:
    return round(100 * x, 1) if isinstance(x, float) else ("–" if x is None else x)


def _cell(spec: SetSpec, home: Path, work: Path, key: str, condition: str):  # type: ignore[no-untyped-def]
    var = variants(spec).get(key)
    if var is None:
        return None
    return stored_run(Step("eval", spec, var, condition, _k(spec, condition)), home, work)


def _k(spec: SetSpec, condition: str) -> int:
    """Distractors shown in a table cell: none with the gold alone or with nothing, else the set's k."""
    return 0 if condition in ("oracle", "closed-book") else spec.k


def comparisons(specs: list[SetSpec], home: Path, work: Path) -> str:
    """Paired bootstrap 95% intervals of the headline metric (B − A on the same questions) for the pairs
    the issue asks about, and the majority-class baseline for label sets."""
    from ragloop.config import load_settings
    from ragloop.evaluation.compare import compare_runs
    from ragloop.evaluation.metrics import paired_bootstrap
    from ragloop.evaluation.run import run_examples

    settings = load_settings(home)
    pairs = [
        (("base", "distractors"), ("raft-plain", "distractors")),
        (("base", "distractors"), ("raft", "distractors")),
        (("dsf", "distractors"), ("raft", "distractors")),
        (("dsf", "closed-book"), ("raft-plain", "distractors")),
        (("raft-plain", "distractors"), ("raft", "distractors")),
        (("base", "no-gold"), ("raft", "no-gold")),
        (("base", "no-gold"), ("raft-plain", "no-gold")),
        (("raft-plain", "oracle"), ("raft-plain", "distractors")),
        (("raft", "oracle"), ("raft", "distractors")),
        (("raft-plain", "distractors"), ("raft-abstain", "distractors")),
        (("raft-plain", "no-gold"), ("raft-abstain", "no-gold")),
        (("base", "distractors"), ("raft-plain-k", "distractors")),
        (("raft-plain", "distractors"), ("raft-plain-k", "distractors")),
        (("raft-plain-k", "oracle"), ("raft-plain-k", "distractors")),
    ]
    rows = []
    for spec in specs:
        metric = {"accuracy": "correct"}.get(spec.metric, spec.metric)
        for (ka, ca), (kb, cb) in pairs:
            a, b = _cell(spec, home, work, ka, ca), _cell(spec, home, work, kb, cb)
            if a is None or b is None:
                continue
            c = compare_runs(settings, a.id, b.id)
            diff = next((m for m in c.metrics if m.name == metric), None)
            if diff is None or diff.interval is None:
                continue
            i = diff.interval
            rows.append([spec.name, f"{variants(spec)[ka].label} ({ca})", f"{variants(spec)[kb].label} ({cb})",
                         spec.metric, _pct(diff.a), _pct(diff.b), f"{100 * i.diff:+.1f}",
                         f"[{100 * i.low:+.1f}, {100 * i.high:+.1f}]", "yes" if i.excludes_zero else "no",
                         f"{len(c.improvements)}/{len(c.regressions)}"])  # fmt: skip
        if spec.metric == "accuracy":  # the majority class of the training side, always answered
            train_file, _ = prepare_data(spec, work)
            from ragloop.datasets.importers import read_qa_file

            labels = [i.answers[0] for i in read_qa_file(train_file, spec.fmt) if i.answers]
            majority = max(set(labels), key=labels.count)
            for key in ("raft", "raft-plain", "base"):
                run = _cell(spec, home, work, key, "distractors")
                if run is None:
                    continue
                ex = run_examples(settings, run.id)
                maj = [float(majority in e.answers) for e in ex]
                got = [float(bool((e.scores or {}).get("correct"))) for e in ex]
                i = paired_bootstrap(maj, got, resamples=2000)
                rows.append([spec.name, f"always '{majority}' (train majority)", f"{variants(spec)[key].label} "
                             "(distractors)", spec.metric, _pct(sum(maj) / len(maj)), _pct(sum(got) / len(got)),
                             f"{100 * i.diff:+.1f}", f"[{100 * i.low:+.1f}, {100 * i.high:+.1f}]",
                             "yes" if i.excludes_zero else "no", ""])  # fmt: skip
    headers = [
        "set",
        "A",
        "B",
        "metric",
        "A",
        "B",
        "B − A",
        "95% CI",
        "CI excludes 0",
        "wrong→right / right→wrong",
    ]
    return table(headers, rows)


def robustness(spec: SetSpec, home: Path, work: Path) -> str:
    """The robustness plot of one set from the stored runs (the oracle run is the k = 0 point)."""
    from ragloop.evaluation.robustness import RobustnessRow, pivot_table, plot

    points = [("oracle", 0), *[("distractors", k) for k in (2, 4, spec.k)], ("no-gold", spec.k)]
    rows = []

    def add(label: str, run, condition: str, k: int) -> None:  # type: ignore[no-untyped-def]
        if run is not None:  # the oracle run is the k = 0 point of the gold-shown curve
            shown = "distractors" if condition == "oracle" else condition
            rows.append(RobustnessRow(label, run.model_version, shown, k, run.id, True, run.metrics))

    for key in ("base", "raft", "raft-plain", "raft-plain-k", "raft-abstain", "dsf"):
        var = variants(spec).get(key)
        if var is not None:
            for condition, k in points:
                add(var.label, stored_run(Step("eval", spec, var, condition, k), home, work), condition, k)
    for version in sweep_versions(home, spec):  # bench/sweep.py's models, where they were run at these k
        for condition, k in points:
            add(_sweep_label(version), sweep_run(spec, home, work, version, condition, k), condition, k)
    if not rows:
        return ""
    OUT.mkdir(exist_ok=True)
    metric = spec.metric
    png, svg = plot(rows, metric, DOCS / f"raft-robustness-{spec.name}")
    return f"Robustness plot: `docs/{png.name}` / `docs/{svg.name}`\n\n" + pivot_table(
        rows, metric, lambda v: str(_pct(v))
    )


def _sweep_label(version: str) -> str:
    """``sweep-hotpotqa-all-lr1e-03-ep2-v1`` -> ``RAFT w/o reasoning, sweep: all questions, lr 1e-03, 2 ep``."""
    m = re.fullmatch(r"sweep-[a-z]+-(\w+)-lr([\w.+-]+)-ep([\d.]+)-v\d+", version)
    return f"RAFT w/o reasoning, sweep: {m[1]} questions, lr {m[2]}, {m[3]} ep" if m else version


def sweep_versions(home: Path, spec: SetSpec) -> list[str]:
    """Versions bench/sweep.py registered for a set (its grid of learning rates, epochs and data sizes)."""
    from ragloop.config import load_settings
    from ragloop.store.aliases import list_models
    from ragloop.store.db import session_scope

    with session_scope(load_settings(home).db_url) as s:
        return [mv.id for mv, _ in list_models(s) if mv.id.startswith(f"sweep-{spec.name}-")]


def sweep_run(  # type: ignore[no-untyped-def]
    spec: SetSpec, home: Path, work: Path, version: str, condition: str = "distractors", k: int | None = None
):
    """A sweep version's stored run under ``condition`` (distractors at the set's k unless ``k`` is given),
    with the evaluation settings of bench/sweep.py."""
    from ragloop.config import load_settings
    from ragloop.evaluation.run import EvalConfig, reusable_run

    _, eval_file = prepare_data(spec, work)
    n = 0 if condition == "oracle" else (spec.k if k is None else k)
    cfg = EvalConfig(data=str(eval_file), model=version, condition=condition, n_distractors=n,
                     limit=LIMIT, max_new_tokens=spec.new_plain)  # fmt: skip
    return reusable_run(load_settings(home), cfg)


def _rank(run, metric: str, second: str) -> tuple[float, float] | None:  # type: ignore[no-untyped-def]
    m = (run.metrics or {}) if run is not None else {}
    return None if m.get(metric) is None else (m[metric], m.get(second) or 0.0)


def best_aliases(specs: list[SetSpec], home: Path, work: Path, log: Path) -> list[str]:
    """Point best-<set> at the trained version with the highest headline metric under `distractors`; a tie
    goes to the higher second metric (macro-F1 beside accuracy, where always-"yes" models tie at the
    majority share; EM beside F1)."""
    out = []
    for spec in specs:
        second = {"accuracy": "macro_f1", "f1": "em"}.get(spec.metric, spec.metric)
        candidates = [(_cell(spec, home, work, key, "distractors"), var.label)
                      for key, var in variants(spec).items() if key != "base"]  # fmt: skip
        # bench/sweep.py's configs, scored on the same questions
        candidates += [(sweep_run(spec, home, work, v), "RAFT w/o reasoning, bench/sweep.py")
                       for v in sweep_versions(home, spec)]  # fmt: skip
        best = None
        for run, label in candidates:
            value = _rank(run, spec.metric, second)
            if value is not None and (best is None or value > best[0]):
                best = (value, run.model_version, label)
        if best:
            sh(["models", "alias", f"best-{spec.name}", best[1]], home, log)
            out.append(
                f"best-{spec.name} → {best[1]} ({best[2]}, {spec.metric} {_pct(best[0][0])}, {second} {_pct(best[0][1])} under distractors)"
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--home", type=Path, default=Path(os.environ.get("RAGLOOP_RAFT_HOME", OUT / "raft" / "home"))
    )
    parser.add_argument("--only", default=",".join(SETS), help="comma-separated sets")
    parser.add_argument(
        "--until-minutes", type=float, default=None, help="start no step after this many minutes"
    )
    parser.add_argument("--report", action="store_true", help="only write the report from stored results")
    parser.add_argument("--list", action="store_true", help="print the plan and what is done")
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    home: Path = args.home
    work = home.parent
    if not (home / "ragloop.toml").exists():
        subprocess.run([RAGLOOP, "init", str(home)], check=True, capture_output=True)
    specs = [SETS[s] for s in args.only.split(",")]
    log = work / "raft-steps.log"
    started = time.perf_counter()
    if not args.report:
        for step in plan(specs):
            done = (model_version(home, step.variant.model_name(step.spec)) is not None if step.kind == "train"
                    else stored_run(step, home, work) is not None)  # fmt: skip
            if args.list:
                print(("done   " if done else "to do  ") + step.title)
                continue
            if done:
                continue
            if args.until_minutes and time.perf_counter() - started > args.until_minutes * 60:
                print(f"time is up; left: {step.title} and after", flush=True)
                break
            t0 = time.perf_counter()
            print(f"== {step.title}", flush=True)
            try:
                (run_train if step.kind == "train" else run_eval)(step, home, work, log)
            except RuntimeError as exc:  # one failed step must not stop the rest of the matrix
                print(f"  FAILED: {exc}", flush=True)
            with (work / "raft-wall.jsonl").open("a") as fh:  # the wall time of every step, across sessions
                fh.write(json.dumps({"step": step.title, "wall_s": time.perf_counter() - t0}) + "\n")
        if args.list:
            return
    text = report(specs, home, work)
    text += "\n\n### Paired comparisons\n\n" + comparisons(specs, home, work)
    for spec in specs:
        if spec.robustness:
            text += "\n\n" + robustness(spec, home, work)
    text += "\n\n" + "\n".join(f"- {line}" for line in best_aliases(specs, home, work, log))
    OUT.mkdir(exist_ok=True)
    (OUT / "raft.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
