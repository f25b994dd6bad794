"""Alembic environment: the URL comes from the service's configuration (GPUAAS_DATABASE_URL)."""
from __future__ import annotations

from alembic import context

from gpuaas_api.db import make_engine
from gpuaas_api.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    given = config.attributes.get("connection")
    connectable = given or make_engine(url)
    if hasattr(connectable, "connect"):
        try:
            with connectable.connect() as connection:
                context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
                with context.begin_transaction():
                    context.run_migrations()
        finally:
            if given is None:
                # The engine is this run's alone: close its pooled connection now, not whenever
                # the garbage collector gets to it (until then PostgreSQL counts an idle session).
                connectable.dispose()
    else:
        context.configure(connection=connectable, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
