"""Alembic environment for egoqa: the URL comes from the caller, -x db=..., $EGOQA_DB, or ./egoqa.db."""

from alembic import context
from egoqa.store.db import make_engine, resolve_url

config = context.config


def _target_metadata():
    """The ORM's tables, for autogenerate and comparisons. egoqa's own upgrade (`enqueue`, `db
    upgrade`) says it only migrates: importing the ORM would cost it 0.2 s, more than a fresh
    database's migrations themselves."""
    if config.attributes.get("migrate_only"):
        return None
    from egoqa.store.models import Base

    return Base.metadata


target_metadata = _target_metadata()


def _url() -> str:
    return config.attributes.get("url") or resolve_url(
        context.get_x_argument(as_dictionary=True).get("db")
    )


def run_migrations_offline() -> None:
    context.configure(
        url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = config.attributes.get("engine") or make_engine(_url())
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
