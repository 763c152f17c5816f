# avat3r task runner (`just --list`)

set shell := ["bash", "-euo", "pipefail", "-c"]

# the fast test suite (what CI runs)
test *ARGS:
    python -m pytest -q -m "not slow" -n 2 {{ARGS}}

# every test, slow ones included
test-all *ARGS:
    python -m pytest -q -n 2 {{ARGS}}

# the end-to-end demo on the embedded default (writes demo_out/)
demo:
    bash recipes/demo.sh demo_out

# benchmarks (tables on stdout; record them in docs/benchmarks.md)
bench:
    python bench/render.py

lint:
    python -m ruff check avat3r cli tests bench recipes
