"""Planning a run: its config, prompt styles, the dataset, the planner that writes every turn's
jobs, recursive zoom as jobs, and the runs that need no model (priors, proposals).

May import `store`, `answers` and `errors`, and `backends.registry` (engine names, to check a
config's `backend`); never `media`, `work`, `report` or `cli`.
"""
