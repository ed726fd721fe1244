"""Runners built on ``apm fit``/``apm predict``: the GLUE benchmark runner (``apm glue``),
test-server submissions and hyper-parameter sweeps (``apm sweep``). They drive ordinary runs
and read back only their ``results.json`` files (the results contract)."""
