"""``ragloop train | jobs``: fine-tuning as background jobs (stage 7, logic in ``ragloop.training``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ragloop.cli.common import HomeOpt, JsonOpt, console, err, home_settings
from ragloop.config import Settings
from ragloop.errors import RagloopError

train_app = typer.Typer(no_args_is_help=True, help="Fine-tune the generator on a dataset version.")


jobs_app = typer.Typer(no_args_is_help=True, help="Background training jobs.")


DatasetOpt = Annotated[
    str, typer.Option("--dataset", help="Dataset version id (see `ragloop dataset list`).")
]


BaseOpt = Annotated[
    str | None,
    typer.Option("--base", help="Base model: 'packaged', a HF folder or .gguf (default: the generator's)."),
]


TrainConfigOpt = Annotated[Path | None, typer.Option("--config", help="Training config (train.yaml).")]


SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override one training setting: KEY=VALUE (repeat).")
]


ForegroundOpt = Annotated[
    bool,
    typer.Option("--foreground", help="Train in this process with a progress bar, not in the background."),
]


NameOpt = Annotated[
    str | None, typer.Option("--name", help="Name the version NAME-vN instead of KIND-DATE-HASH.")
]


def _overrides(pairs: list[str] | None) -> dict:
    import yaml

    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"--set {pair!r}: write KEY=VALUE, e.g. --set learning_rate=1e-4")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return out


def _train(kind: str, home: Path | None, foreground: bool, **options) -> None:  # type: ignore[no-untyped-def]
    from ragloop.training import jobs

    settings = home_settings(home)
    config = {k: v for k, v in options.items() if v is not None and v != {}}
    job = None
    try:
        if not foreground:
            job = jobs.submit(settings, kind, config)
            pid = jobs.ensure_worker(settings)
            started = f"worker started (pid {pid})" if pid else "a worker is already running"
            console.print(f"job [bold]{job.id}[/] queued ({kind} on {config['dataset']}); {started}")
            console.print(f"follow it: ragloop jobs logs {job.id} -f")
            return
        job = jobs.submit(settings, kind, config, foreground=True)
        job = _run_with_bar(settings, job)
    except KeyboardInterrupt:
        err.print("interrupted" + (f"; continue later with: ragloop jobs resume {job.id}" if job else ""))
        raise typer.Exit(code=130) from None
    if job.status != "succeeded":
        err.print(f"[bold red]{job.status}[/]: {job.error or ''}")
        raise typer.Exit(code=1)
    if kind == "embedder":
        embedder = job.result.get("embedder_version")
        console.print(f"job {job.id} succeeded: embedder version [bold]{embedder}[/]", soft_wrap=True)
        console.print(
            f"measure it: ragloop eval retrieval --embedder {embedder} --qa HELDOUT.jsonl", soft_wrap=True
        )
        return
    console.print(f"job {job.id} succeeded: model version [bold]{job.result.get('model_version')}[/]")
    console.print(f"serve it: ragloop models promote {job.result.get('model_version')}")


def _fmt(value, spec: str) -> str:  # type: ignore[no-untyped-def]
    return format(value, spec) if isinstance(value, int | float) else "–"


def _run_with_bar(settings: Settings, job):  # type: ignore[no-untyped-def]
    from rich.progress import TimeElapsedColumn

    from ragloop.training import jobs

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[tps]} tok/s"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err) as bar:
        task = bar.add_task(f"{job.kind} {job.id[:8]}", total=None, loss="–", tps="–")

        def progress(p: dict) -> None:
            tps = p.get("tokens_per_s", p.get("tokens_per_second", p.get("train_tokens_per_second")))
            bar.update(task, completed=p.get("step") or 0, total=p.get("total") or None,
                       loss=_fmt(p.get("loss"), ".4f"), tps=_fmt(tps, ".0f"))  # fmt: skip

        return jobs.run_job(settings, job.id, progress=progress)


@train_app.command("sft")
def train_sft_command(
    dataset: DatasetOpt,
    base: BaseOpt = None,
    config: TrainConfigOpt = None,
    set_: SetOpt = None,
    name: NameOpt = None,
    foreground: ForegroundOpt = False,
    home: HomeOpt = None,
) -> None:
    """Supervised fine-tuning (LoRA) on a dataset version; the adapter is registered as a model version."""
    _train("sft", home, foreground, dataset=dataset, base=base, name=name,
           config_path=str(config) if config else None, train=_overrides(set_))  # fmt: skip


@train_app.command("embedder")
def train_embedder_command(
    dataset: Annotated[
        str, typer.Option("--dataset", help="Pairs dataset id (see `ragloop dataset pairs`).")
    ],
    base: Annotated[
        str | None,
        typer.Option(
            "--base",
            help="Embedder to tune: 'packaged', a sentence-transformers folder or an embedder version "
            "(default: the [embedding] model).",
        ),
    ] = None,
    set_: SetOpt = None,
    name: Annotated[str | None, typer.Option("--name", help="Name the version NAME-tuned-HASH.")] = None,
    foreground: ForegroundOpt = False,
    home: HomeOpt = None,
) -> None:
    """Fine-tune the retriever's embedding model on a pairs dataset (MultipleNegativesRankingLoss with hard
    negatives); registered as an embedder version with its lineage."""
    _train("embedder", home, foreground, dataset=dataset, base=base, name=name, train=_overrides(set_))


@train_app.command("dpo")
def train_dpo_command(
    dataset: DatasetOpt,
    from_: Annotated[str, typer.Option("--from", help="Model version (or alias) to start from.")],
    base: BaseOpt = None,
    config: TrainConfigOpt = None,
    set_: SetOpt = None,
    name: NameOpt = None,
    foreground: ForegroundOpt = False,
    home: HomeOpt = None,
) -> None:
    """Preference tuning (DPO) of a trained version on a dataset version's preference pairs."""
    _train("dpo", home, foreground, dataset=dataset, base=base, name=name, **{"from": from_},
           config_path=str(config) if config else None, train=_overrides(set_))  # fmt: skip


@train_app.command("register")
def train_register_command(
    run: Annotated[Path, typer.Argument(help="Folder of a finished run (--out of ragloop.training.run).")],
    base: BaseOpt = None,
    name: NameOpt = None,
    home: HomeOpt = None,
) -> None:
    """Register an SFT run trained outside the job queue (`accelerate launch`, another machine with a GPU).

    The run's dataset version must be in this home; its recorded fingerprint is checked against this home's
    data, base model and the run's settings before anything is registered."""
    from ragloop.training.lineage import register_model, registered_as
    from ragloop.training.sft import completed_run

    settings = home_settings(home)
    result = completed_run(settings, run, base=base)
    existing = registered_as(settings.db_url, result.adapter_dir)
    if existing:
        console.print(f"already registered as model version [bold]{existing}[/]; nothing to do")
        return
    mv = register_model(settings, result, kind="sft", dataset_id=result.metrics["dataset"],
                        train_config=result.metrics["config"], base=base, name=name)  # fmt: skip
    console.print(
        f"registered model version [bold]{mv.id}[/] ({result.steps} steps on {result.metrics['dataset']})"
    )
    console.print(f"serve it: ragloop models promote {mv.id}")


def _job_row(job) -> list[str]:  # type: ignore[no-untyped-def]
    p = job.progress or {}
    step = f"{p.get('step')}/{p.get('total')}" if p.get("step") is not None else ""
    return [job.id[:12], job.kind, job.status, (job.config or {}).get("dataset", ""), step, _fmt(p.get("loss"), ".4f"),
            job.created_at.isoformat(timespec="seconds"), (job.result or {}).get("model_version") or ""]  # fmt: skip


@jobs_app.command("list")
def jobs_list(
    status: Annotated[str | None, typer.Option(help="Only jobs with this status.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 50,
    as_json: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """Jobs, newest first. A job whose worker died (crash, reboot) is marked interrupted here."""
    from ragloop.training import jobs

    settings = home_settings(home)
    rows = jobs.list_jobs(settings, limit=limit, status=status)
    if as_json:
        print(json.dumps([jobs.job_dict(j) for j in rows], indent=2, default=str))
        return
    table = Table()
    for column in ("id", "kind", "status", "dataset", "step", "loss", "created", "model"):
        # ids (a prefix is enough for every jobs command) and statuses must survive a narrow terminal
        table.add_column(column, no_wrap=column in ("id", "status"), min_width=12 if column == "id" else None)
    for job in rows:
        table.add_row(*_job_row(job))
    console.print(table)
    pid = jobs.worker_pid(settings)
    console.print(f"[dim]worker: {'running, pid ' + str(pid) if pid else 'not running'}[/]")


@jobs_app.command("show")
def jobs_show(
    job_id: Annotated[str, typer.Argument()], as_json: JsonOpt = False, home: HomeOpt = None
) -> None:
    """One job: status, config, progress, result, error."""
    from ragloop.training import jobs

    settings = home_settings(home)
    jobs.recover(settings)
    data = jobs.job_dict(jobs.get_job(settings, job_id))
    if as_json:
        print(json.dumps(data, indent=2, default=str))
        return
    for key in ("id", "kind", "status", "created_at", "started_at", "finished_at", "heartbeat_at", "pid",
                "output_dir", "log_path", "error"):  # fmt: skip
        if data[key] is not None:
            console.print(f"[bold]{key}[/]: {data[key]}", highlight=False)
    for key in ("config", "progress", "result"):
        if data[key]:
            console.print(f"[bold]{key}[/]: {json.dumps(data[key], indent=2, default=str)}", highlight=False)


@jobs_app.command("logs")
def jobs_logs(
    job_id: Annotated[str, typer.Argument()],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")] = False,
    tail: Annotated[int | None, typer.Option(help="Only the last N bytes.")] = None,
    home: HomeOpt = None,
) -> None:
    """Print a job's log (trainer output, progress lines, errors)."""
    import time

    from ragloop.training import jobs

    settings = home_settings(home)
    try:
        job = jobs.get_job(settings, job_id)
        text, offset = jobs.read_log(job, tail=tail)
        sys.stdout.write(text)
        while follow and job.status in jobs.ACTIVE:
            time.sleep(1.0)
            jobs.recover(settings)
            job = jobs.get_job(settings, job.id)
            text, offset = jobs.read_log(job, offset=offset)
            sys.stdout.write(text)
            sys.stdout.flush()
    except KeyboardInterrupt:
        return
    if follow:
        err.print(f"job {job.id} {job.status}")


@jobs_app.command("cancel")
def jobs_cancel(job_id: Annotated[str, typer.Argument()], home: HomeOpt = None) -> None:
    """Cancel a job: queued at once, running at its next training step. Nothing is registered."""
    from ragloop.training import jobs

    job = jobs.cancel(home_settings(home), job_id)
    console.print(f"job {job.id}: {'cancel requested' if job.status == 'running' else job.status}")


@jobs_app.command("resume")
def jobs_resume(job_id: Annotated[str, typer.Argument()], home: HomeOpt = None) -> None:
    """Queue an interrupted (or failed, cancelled) job again; it continues from its last checkpoint."""
    from ragloop.training import jobs

    settings = home_settings(home)
    job = jobs.resume(settings, job_id)
    pid = jobs.ensure_worker(settings)
    console.print(
        f"job {job.id} queued to resume; " + (f"worker started (pid {pid})" if pid else "worker running")
    )


@jobs_app.command("worker")
def jobs_worker(
    once: Annotated[bool, typer.Option(help="Run the queued jobs, then exit.")] = False,
    home: HomeOpt = None,
) -> None:
    """Run this home's job worker in the foreground (for a service manager; `train` starts one on demand)."""
    from ragloop.training import jobs

    settings = home_settings(home)
    if jobs.worker_pid(settings) is not None:
        raise RagloopError(f"A worker already runs for {settings.home} (pid {jobs.worker_pid(settings)}).")
    jobs.install_sigterm_handler()
    try:
        ran = jobs.run_worker(settings, once=once)
    except KeyboardInterrupt:
        ran = 0
    console.print(f"worker ran {ran} job(s)")
