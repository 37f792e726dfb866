from alembic import context
from sqlalchemy import text

from notify_server.config import get_settings
from notify_server.db import make_engine
from notify_server.models import Base

config = context.config
url = (
    config.attributes.get("url")
    or context.get_x_argument(as_dictionary=True).get("url")
    or get_settings().database_url
)
engine = make_engine(url)

with engine.connect() as connection:
    if connection.dialect.name == "postgresql":
        # Several servers starting on one database migrate one at a time.
        connection.execute(text("SELECT pg_advisory_lock(7281)"))
        connection.commit()
    try:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
    finally:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_unlock(7281)"))
            connection.commit()
engine.dispose()
