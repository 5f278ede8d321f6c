"""The database: models, migrations, connections, and the queue (the only writer of job state)."""
