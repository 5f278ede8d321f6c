"""What responses say and how they score: the answer grammar, parsing and NLQ metrics,
choosing one of n samples, the zoom's choice of window, and the scores stored per query.

May import `store` and `errors` only; never `report` (reports read what answers wrote).
"""
