"""Engines: a batch of rendered requests in, one result per request out (`base`), and the engines
by name (`registry`, which imports none of them until one is loaded: heavy imports stay inside
each engine).

May import `plan` (the generation config every request carries), `store` and `errors`; never
`media`, `work`, `report` or `cli`.
"""
