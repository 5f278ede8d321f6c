"""Reading runs: summaries and breakdowns, the tables and files `egoqa report` writes, charts,
intervals and paired comparisons, the explorer, the official export, the original's scoring.

May import `store`, `answers`, `plan`, `backends` and `media` (thumbnails); never `work`, `dev`
or `cli`.
"""
