"""``ragloop ab``: A/B experiments on live traffic, started, read, stopped and promoted (logic in
``ragloop.monitoring.ab``; the same functions answer ``/api/ab``)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from ragloop.cli.common import HomeOpt, JsonOpt, console, home_settings

DEFAULT_ALIAS = "production"  # the store's default alias, named here so `ragloop --help` imports no store

ab_app = typer.Typer(
    no_args_is_help=True, help="A/B experiments: a candidate version on a share of live traffic."
)

AliasOpt = Annotated[str, typer.Option("--alias", help="The alias whose traffic is split.")]
ExperimentArg = Annotated[
    str | None, typer.Argument(help="Experiment id or prefix (default: the one running on the alias).")
]


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"{what} takes numbers separated by commas, got {text!r}") from None


@ab_app.command("start")
def ab_start(
    candidate: Annotated[str, typer.Option("--candidate", help="Model version id (or alias) to try.")],
    share: Annotated[float, typer.Option("--share", help="The candidate's share of units, in (0, 1).")],
    alias: AliasOpt = DEFAULT_ALIAS,
    ramp: Annotated[
        str,
        typer.Option(
            "--ramp",
            help="Shares to pass through first, e.g. 0.05,0.1 (each stage waits "
            "for ab.stage_units candidate units).",
        ),  # fmt: skip
    ] = "",
    primary: Annotated[str, typer.Option("--primary", help="The metric that decides.")] = "thumbs_up",
    guardrails: Annotated[
        str | None,
        typer.Option(
            "--guardrails",
            help="Metrics whose harm rolls the candidate back, comma-separated "
            "(default: error_rate,latency_p95,citation_verified).",
        ),
    ] = None,
    min_units: Annotated[
        int | None,
        typer.Option(
            "--min-units", help="No verdict on the primary metric before this many units (default: 100)."
        ),
    ] = None,
    max_days: Annotated[
        float | None, typer.Option("--max-days", help="Stop the experiment after this many days.")
    ] = None,
    candidate_embedder: Annotated[
        str | None,
        typer.Option(
            "--candidate-embedder",
            help="Embedder version the candidate serves with (`base`: the base embedder); default: the "
            "control's. With the control's model version too, the experiment compares retrievers only.",
        ),
    ] = None,
    as_json: JsonOpt = False,
    home: HomeOpt = None,
) -> None:
    """Start an experiment: from the next request on, the candidate answers its share of the alias's units
    (conversations, else users), the alias's version the rest; a running server checks it every
    ab.check_interval_s and rolls the candidate back when a guardrail shows harm."""
    from ragloop.monitoring import ab

    options: dict[str, Any] = {}
    if guardrails is not None:
        options["guardrails"] = [g.strip() for g in guardrails.split(",") if g.strip()]
    if min_units is not None:
        options["min_units"] = min_units
    if candidate_embedder is not None:
        from ragloop.ingest.embed import embedder_id

        options["candidate_embedder"] = embedder_id(candidate_embedder)
    started = ab.start(
        home_settings(home),
        candidate=candidate,
        alias=alias,
        share=share,
        ramp=_floats(ramp, "--ramp"),
        primary=primary,
        max_days=max_days,
        **options,
    )
    if as_json:
        print(json.dumps(started, indent=2, default=str))
        return
    arms = started["arms"]

    def pair(arm: dict) -> str:
        embedder = arm.get("embedder_version")
        return arm["model_version"] + (f" (embedder {embedder})" if embedder else "")

    console.print(
        f"experiment [bold]{started['id']}[/] on {started['alias']}: candidate "
        f"{pair(arms['candidate'])} at share {started['share']:g} against {pair(arms['control'])}",
        highlight=False,
    )


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


@ab_app.command("status")
def ab_status(experiment: ExperimentArg = None, alias: AliasOpt = DEFAULT_ALIAS, as_json: JsonOpt = False,
              home: HomeOpt = None) -> None:  # fmt: skip
    """Where an experiment stands: per arm units and interactions, each metric with the interval of
    candidate − control and its verdict (better / worse / inconclusive), the sample-ratio check."""
    from ragloop.monitoring import ab

    data = ab.status(home_settings(home), experiment, alias=alias)
    if as_json:
        print(json.dumps(data, indent=2, default=str))
        return
    e = data["experiment"]
    console.print(
        f"[bold]{e['id']}[/] on {e['alias']} · {e['status']} · share {e['share']:g} "
        f"(stage {e['stage']}{' of ' + str(len(e['ramp'])) if e['ramp'] else ''}) · started {e['started_at']}",
        highlight=False,
    )
    if e["decision"]:
        console.print(f"decision: {e['decision']} by {e['stopped_by']} — {e['reason']}", highlight=False)
    for arm, a in data["arms"].items():
        console.print(
            f"{arm}: {a['model_version']} · {a['units']} units, {a['interactions']} interactions, "
            f"{a['errors']} errors",
            highlight=False,
        )
    table = Table("metric", "role", "control", "candidate", "candidate − control", "interval", "verdict")
    for name, m in data["metrics"].items():
        role = ", ".join(
            r for r, on in (("primary", m["primary"]), (m["guardrail"] or "", m["guardrail"])) if on
        )
        arms = [m[arm].get("value", m[arm]["mean"]) for arm in ("control", "candidate")]
        iv = m["interval"] or {}
        interval = f"[{_fmt(iv.get('lo'))}, {_fmt(iv.get('hi'))}]" if iv else f"limit {_fmt(m.get('limit'))}"
        table.add_row(name, role, *(_fmt(v) for v in arms), _fmt(iv.get("estimate")), interval, m["verdict"])
    console.print(table)
    p = data["primary"]
    held = f" (held until {p['min_units']} units)" if p["held"] else ""
    console.print(f"primary {p['metric']}: [bold]{p['verdict']}[/]{held} over {p['units']} units")
    for harm in data["guardrails"]["harm"]:
        console.print(f"[red]guardrail[/] {harm}", highlight=False)
    for s in data["srm"]["stages"]:
        flag = " [red]SAMPLE RATIO MISMATCH[/]" if s["flagged"] else ""
        console.print(
            f"stage {s['stage']} share {s['share']:g}: {s['control']} control / {s['candidate']} candidate units, "
            f"SRM p {_fmt(s['p'])}{flag}",
            highlight=False,
        )


@ab_app.command("stop")
def ab_stop(
    experiment: ExperimentArg = None,
    alias: AliasOpt = DEFAULT_ALIAS,
    reason: Annotated[str | None, typer.Option("--reason", help="Why, for the record.")] = None,
    home: HomeOpt = None,
) -> None:
    """Stop an experiment: every unit goes back to the alias's version from its next request."""
    from ragloop.monitoring import ab

    stopped = ab.stop(home_settings(home), experiment, alias=alias, reason=reason or "stopped from the CLI")
    console.print(f"experiment {stopped['id']} stopped; {stopped['alias']} serves its version to everyone")


@ab_app.command("promote")
def ab_promote(
    experiment: ExperimentArg = None, alias: AliasOpt = DEFAULT_ALIAS, home: HomeOpt = None
) -> None:
    """Serve the experiment's candidate under its alias (loaded first, recorded as a release), which ends
    the experiment as promoted."""
    from ragloop.monitoring import ab

    done = ab.promote(home_settings(home), experiment, alias=alias, note="cli")
    moved = done["release"]
    console.print(
        f"{moved['alias']}: {moved['previous']} → {moved['model_version']}; experiment "
        f"{done['experiment']['id']} {done['experiment']['status']}"
    )
