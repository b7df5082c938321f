"""Postgres persistence of the registry: schema, migrations and the repository."""
