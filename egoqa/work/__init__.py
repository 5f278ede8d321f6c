"""Working a run: claim a batch, prepare it (claiming ahead), run it on a backend, record it,
renew its lease, stop at safe points; the supervisor, the devices, the progress display.

May import `store`, `answers`, `plan`, `backends` and `media`; never `report`, `dev` or `cli`.
"""
