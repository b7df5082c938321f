"""The registry: modules, versions, states, routes and the outbox, on Postgres."""
