"""The database: models, migrations, connections, and the queue (the only writer of job state);
every SQL statement of egoqa lives here.

May import `egoqa.errors` (and the package's version) only: every other room reads and writes
through it.
"""
