"""``ragloop models``: model versions, their lineage and their release under aliases (logic in
``ragloop.training.lineage`` and ``ragloop.generation.release``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ragloop.cli.common import HomeOpt, JsonOpt, console, home_settings

models_app = typer.Typer(no_args_is_help=True, help="Model versions and aliases.")

EmbedderOpt = Annotated[
    str | None,
    typer.Option(
        "--embedder",
        help="Embedder version the alias serves with (`base`: the base embedder); default: the alias keeps "
        "its embedder. Its vectors must cover the knowledge base (`ragloop kb reembed`).",
    ),
]


def _embedder(name: str | None):  # type: ignore[no-untyped-def]
    from ragloop.ingest.embed import embedder_id
    from ragloop.store.aliases import KEEP

    return KEEP if name is None else embedder_id(name)


def _pair(version: str, embedder: str | None) -> str:
    """A served pair as a person reads it: the embedder is named only when it is a tuned one."""
    return f"{version} (embedder {embedder})" if embedder else version


@models_app.command("list")
def models_list(home: HomeOpt = None) -> None:
    """Model versions with their aliases."""
    from ragloop.store.aliases import list_models

    table = Table("version", "aliases", "base", "adapter", "created")
    for mv, aliases in list_models(home_settings(home).db_url):
        table.add_row(
            mv.id,
            ", ".join(aliases),
            mv.base_model,
            mv.adapter_path or "",
            mv.created_at.isoformat(timespec="seconds"),
        )
    console.print(table)


@models_app.command("embedders")
def models_embedders(home: HomeOpt = None) -> None:
    """Embedder versions (tuned retriever embedders) with the aliases serving them and the KB versions
    embedded with them; `base` is the configured base embedder."""
    from ragloop.store.aliases import list_models
    from ragloop.training.embedder import list_embedder_versions

    settings = home_settings(home)
    serving: dict[str | None, list[str]] = {}
    for mv, names in list_models(settings.db_url):
        for name in names:
            serving.setdefault(_alias_embedder(settings, name), []).append(f"{name} ({mv.id})")
    table = Table("embedder", "dim", "base", "pairs dataset", "KB versions", "served by", "created")
    table.add_row("base", "", settings.embedding.model, "", "every", ", ".join(serving.get(None, [])), "")
    for ev in list_embedder_versions(settings.db_url):
        table.add_row(
            ev.id,
            str(ev.dim),
            ev.base,
            (ev.dataset_id or "")
            + (" [red](erased data)[/]" if (ev.meta or {}).get("contains_erased") else ""),
            ", ".join(str(v) for v in ev.kb_versions or []) or "none (run `ragloop kb reembed`)",
            ", ".join(serving.get(ev.id, [])),
            ev.created_at.isoformat(timespec="seconds"),
        )
    console.print(table)


def _alias_embedder(settings, alias: str) -> str | None:  # type: ignore[no-untyped-def]
    from ragloop.store.aliases import served_pair

    return served_pair(settings.db_url, alias).embedder_version


@models_app.command("alias")
def models_alias(
    name: Annotated[str, typer.Argument()],
    version: Annotated[str, typer.Argument()],
    embedder: EmbedderOpt = None,
    home: HomeOpt = None,
) -> None:
    """Point an alias (production, candidate, ...) at a model version (and an embedder version)."""
    from ragloop.generation.release import set_alias

    moved = set_alias(home_settings(home), name, version, note="cli", embedder=_embedder(embedder))
    console.print(
        f"{name} → {_pair(moved.model_version, moved.embedder_version)}", highlight=False, soft_wrap=True
    )


@models_app.command("show")
def models_show(version: Annotated[str, typer.Argument(help="Version id or alias.")], as_json: JsonOpt = False,
                home: HomeOpt = None) -> None:  # fmt: skip
    """A version's lineage: base and hash, dataset and hash, policy, KB version, hyperparameters, metrics."""
    from ragloop.training.lineage import model_record, registry_events

    db_url = home_settings(home).db_url
    data = model_record(db_url, version)
    events = [(e.created_at, e.action, e.alias, e.previous_version_id, e.model_version_id)
              for e in registry_events(db_url, data["id"], limit=10)]  # fmt: skip
    if as_json:
        print(json.dumps(data, indent=2, default=str))
        return
    meta = data["meta"] or {}
    ds = meta.get("dataset") or {}
    console.print(
        f"[bold]{data['id']}[/] {meta.get('kind', '')} · aliases: {', '.join(data['aliases']) or 'none'}"
    )
    console.print(f"base {data['base_model']} (sha256 {data['base_hash'][:16]}…)", highlight=False)
    if data["adapter_path"]:
        console.print(f"adapter {data['adapter_path']}", highlight=False)
    if data["parent_id"]:
        console.print(f"parent {data['parent_id']}")
    if ds:
        console.print(
            f"dataset {ds.get('id')} (hash {str(ds.get('content_hash'))[:16]}…) · KB v{meta.get('kb_version')}"
        )
    policy = meta.get("curation_policy") or {}
    if policy:
        console.print(f"curation policy {policy.get('name')} v{policy.get('version')}")
    if data["contains_erased"]:
        console.print(f"[red]trained on erased data[/]: {data['erased_note']}")
    for section in ("hyperparameters", "metrics", "training", "code"):
        if meta.get(section):
            console.print(f"[bold]{section}[/]: " + ", ".join(f"{k}={v}" for k, v in meta[section].items()),
                          highlight=False)  # fmt: skip
    for when, action, alias, prev, new in events:
        console.print(
            f"[dim]{when.isoformat(timespec='seconds')} {action} {alias or ''} {prev or ''} → {new}[/]"
        )


@models_app.command("diff")
def models_diff(a: Annotated[str, typer.Argument()], b: Annotated[str, typer.Argument()], as_json: JsonOpt = False,
                home: HomeOpt = None) -> None:  # fmt: skip
    """What differs between two versions: base, lineage, dataset, policy, hyperparameters, metrics."""
    from ragloop.training.lineage import diff_models, get_model

    db_url = home_settings(home).db_url
    diff = diff_models(get_model(db_url, a), get_model(db_url, b))
    if as_json:
        print(json.dumps(diff, indent=2, default=str))
        return
    table = Table("section", "key", diff["a"], diff["b"], "Δ")
    for section in ("base", "lineage", "dataset", "curation_policy", "hyperparameters", "metrics", "code"):
        for key, entry in diff[section].items():
            delta = entry.get("delta")
            table.add_row(
                section, key, str(entry["a"]), str(entry["b"]), "" if delta is None else f"{delta:+.4g}"
            )
    console.print(table)


@models_app.command("promote")
def models_promote(
    version: Annotated[str, typer.Argument(help="Version id (or alias) to serve.")],
    alias: Annotated[str, typer.Option(help="Alias to move.")] = "production",
    embedder: EmbedderOpt = None,
    home: HomeOpt = None,
) -> None:
    """Serve a version (with an embedder version) under an alias from the next request on (running servers
    pick it up, no restart). `ragloop models promote production --embedder ID` switches only the embedder."""
    from ragloop.generation.release import promote

    moved = promote(home_settings(home), version, alias, note="cli", embedder=_embedder(embedder))
    console.print(
        f"{alias} → {_pair(moved.model_version, moved.embedder_version)}", highlight=False, soft_wrap=True
    )


@models_app.command("rollback")
def models_rollback(
    alias: Annotated[str, typer.Option(help="Alias to move back.")] = "production", home: HomeOpt = None
) -> None:
    """Point an alias back at the version and embedder it served before its last promotion."""
    from ragloop.generation.release import rollback

    moved = rollback(home_settings(home), alias, note="cli")
    console.print(
        f"{alias}: {_pair(moved.previous or '', moved.previous_embedder)} → "
        f"{_pair(moved.model_version, moved.embedder_version)}",
        highlight=False,
        soft_wrap=True,  # one line, however long the ids: scripts read it
    )


@models_app.command("export")
def models_export(
    version: Annotated[str, typer.Argument(help="Version id or alias.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write (must be new or empty).")],
    merged: Annotated[
        bool, typer.Option("--merged", help="Fold the adapter into full safetensors weights.")
    ] = False,
    home: HomeOpt = None,
) -> None:
    """Export a version: its LoRA adapter folder, or a merged model plain transformers loads."""
    from ragloop.training.lineage import export_model

    path = export_model(home_settings(home), version, out, merged=merged)
    console.print(f"exported {'merged model' if merged else 'adapter'} to {path}")
