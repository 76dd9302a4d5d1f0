"""Alembic migrations of the database schema, one file per revision in versions/. They run from
code (service/store/migrate.py) with the script location set there: no alembic.ini, so the
package works wherever it is installed.

A schema change is a new revision: change the models in db.py, then draft it against a database
at head and review the draft (autogenerate misses renames and server defaults):

    from alembic import command
    from sqlalchemy import create_engine
    from kdserve.service.store import migrate
    with create_engine(URL).begin() as conn:
        command.revision(migrate.config(conn), "what changed", autogenerate=True, rev_id="0002")
"""
