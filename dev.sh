#!/usr/bin/env bash
# gatattn set-up and entry points. Each command creates .venv when it is missing.
#   ./dev.sh main   set up, then run the main job: `gatattn verify` and an attention-graph export
#   ./dev.sh test   set up, then run ruff, mypy, the strict docs build and the whole test suite
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
PY="$VENV/bin/python"
# The CPU build of torch: a plain `torch` requirement in a fresh environment can pull a
# multi-GB CUDA build, so the pinned CPU wheel goes in first and pyproject's range accepts it.
TORCH_SPEC="${GATATTN_TORCH:-torch==2.13.0}"
STAMP="$VENV/.gatattn-setup"

setup() {
    local want
    want="$(cat pyproject.toml dev.sh | sha256sum | cut -c1-16)"
    if [ -x "$PY" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
        return 0
    fi
    echo "[dev.sh] setting up $VENV" >&2
    [ -x "$PY" ] || python3 -m venv "$VENV"
    "$PY" -m pip install --quiet --upgrade pip </dev/null
    "$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install --quiet "$TORCH_SPEC" </dev/null
    "$PY" -m pip install --quiet -e ".[test,plot,analysis,pretrained,hf,docs]" sentence-transformers </dev/null
    echo "$want" > "$STAMP"
}

cmd="${1:-}"
case "$cmd" in
    main)
        setup
        export MPLBACKEND=Agg
        "$VENV/bin/gatattn" verify
        "$VENV/bin/gatattn" export --text "the cat sat on the mat" --out out/
        ;;
    test)
        setup
        export MPLBACKEND=Agg
        "$VENV/bin/ruff" check gatattn tests examples benchmarks docs
        "$VENV/bin/ruff" format --check gatattn tests examples benchmarks docs
        "$VENV/bin/mypy"
        # The documentation site: any warning (broken link or anchor, missing reference) fails.
        NO_MKDOCS_2_WARNING=1 "$VENV/bin/mkdocs" build --strict --quiet --site-dir site/
        set +e
        "$PY" -m pytest -q -p no:cacheprovider "${@:2}" </dev/null
        rc=$?
        set -e
        if [ "$rc" -eq 5 ]; then
            echo "[dev.sh] pytest collected no tests: that is a failure" >&2
            exit 1
        fi
        exit "$rc"
        ;;
    *)
        echo "usage: ./dev.sh main | test [pytest args]" >&2
        exit 2
        ;;
esac
