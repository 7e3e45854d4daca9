"""``ragloop keys``: API keys, stored hashed (logic in ``ragloop.store.keys``)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ragloop.cli.common import HomeOpt, console, err, home_settings

keys_app = typer.Typer(no_args_is_help=True, help="API keys (stored hashed).")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument()],
    admin: Annotated[bool, typer.Option(help="May ingest and administer.")] = False,
    collection: Annotated[
        list[str] | None, typer.Option(help="Scope to these collections (repeat); default all.")
    ] = None,
    home: HomeOpt = None,
) -> None:
    """Create an API key; the secret is printed once and stored only hashed."""
    from ragloop.store.keys import create_key

    key, secret = create_key(home_settings(home).db_url, name, admin=admin, collections=collection or None)
    err.print(
        f"key {key.id} ({'admin' if admin else 'user'}; collections: {', '.join(collection) if collection else 'all'}) — store it now, it is not shown again:"
    )
    print(secret)


@keys_app.command("list")
def keys_list(home: HomeOpt = None) -> None:
    """List keys (never their secrets)."""
    from ragloop.store.keys import list_keys

    table = Table("id", "name", "prefix", "admin", "collections", "created", "revoked")
    for k in list_keys(home_settings(home).db_url):
        table.add_row(
            k.id,
            k.name,
            k.prefix + "…",
            "yes" if k.admin else "",
            ", ".join(k.collections or []) or "all",
            k.created_at.isoformat(timespec="seconds"),
            k.revoked_at.isoformat(timespec="seconds") if k.revoked_at else "",
        )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="Key id or prefix.")], home: HomeOpt = None
) -> None:
    """Revoke a key: it stops working on the next request."""
    from ragloop.store.keys import revoke_key

    key = revoke_key(home_settings(home).db_url, key_id)
    console.print(f"revoked {key.id}")
