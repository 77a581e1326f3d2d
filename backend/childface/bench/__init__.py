"""Benchmarks: the figures the README's performance table quotes, each re-runnable by `childface bench ...`.

One module per thing measured: `pipeline` (detector + embedder against dlib), `search` (the
vector index), `api` (the HTTP API), `imports` (bulk import), `duplicates` (the duplicates
finder), `admin` (the admin's pages). They report figures, not pass/fail verdicts.
"""
