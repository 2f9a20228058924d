#!/usr/bin/env bash
# Runs again, with the language models sampling other text, every test that made a model generate in a run
# logged with RAG_TEST_GENERATION_LOG. A test that fails here depends on what a model happened to write, which
# differs between CPUs and llama.cpp builds (tests/generation_check/perturb.py).
#
#   RAG_TEST_GENERATION_LOG=/tmp/gen.log .venv/bin/python -m pytest      # any run: logs the generating tests
#   scripts/rerun-generating-tests.sh /tmp/gen.log [SEED] [pytest args]   # then this
set -euo pipefail
cd "$(dirname "$0")/.."
log=${1:?usage: $0 GENERATION_LOG [SEED] [pytest args]}
seed=${2:-$(( $(date +%s) % 100000 ))}
shift $(( $# >= 2 ? 2 : 1 ))
if [ ! -s "$log" ]; then
  echo "no generating test is logged in $log: was the run made with RAG_TEST_GENERATION_LOG=$log?" >&2
  exit 2
fi
echo "== $(sort -u "$log" | wc -l) tests generated text; again with RAG_TEST_PERTURB_SEED=$seed (replay: $0 $log $seed)" >&2
unset RAG_TEST_GENERATION_LOG
RAG_TEST_PERTURB_SEED=$seed exec .venv/bin/python -m pytest --only-tests-in="$log" "$@"
