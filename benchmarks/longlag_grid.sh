#!/usr/bin/env bash
# The long-time-lag grids of docs/results.md ("Long-time-lag problems") in one run.
#
# Run from the repository root with the virtual environment's `carousel` on PATH:
#
#     WORKERS=14 OUT=runs bash benchmarks/longlag_grid.sh
#
# Environment:
#   WORKERS  parallel runs in all, one torch thread each (default 14; at least 3)
#   OUT      parent of the grids' output folders (default runs)
#   TOTAL    wall-clock seconds the whole script may take (default 450); every grid gets a
#            --time-budget that ends by then, and runs cut off by it are not recorded
#   SMOKE=1  a tiny version (1 seed, a few thousand sequences, small test sets, short lags)
#            that checks the script end to end in about a minute; use another OUT for it
#
# Re-running the same command resumes: each grid skips the runs already in OUT/<grid>/cells/
# with matching settings (budgets in sequences and seconds are part of the settings).
#
# Six grids, in three chains that run side by side (WORKERS = A + B + C workers):
#   A (3 workers)  longlag-sutskever    rnn-sutskever2013 on addition-martens2011, T=80
#   B (3 workers)  longlag-rnn-sgd-1M   rnn-sgd on adding-1997, T=100, 1,000,000 sequences
#                  longlag-order-mult   lstm, gru on temporal-order(-3)-1997, multiplication-1997
#                                       at T=100
#                  longlag-mult-lr2e-3  the same on multiplication-1997 with Adam 2e-3, not 1e-2
#   C (the rest)   longlag-adding       the default preset: delay-tap, rnn-sgd, lstm, gru on
#                                       adding-1997 at T=12,25,50,100
#                  longlag-variants     the 10 LSTM variants on adding-1997 at T=100
# Per-run budgets are in training sequences (machine-independent); the --cell-seconds caps are
# a safety net sized, with the sequence budgets, from one-thread timings on a loaded 2-core
# x86_64 machine (see docs/results.md), so that all of it ends within TOTAL on 14 cores.
set -euo pipefail

WORKERS=${WORKERS:-14}
OUT=${OUT:-runs}
TOTAL=${TOTAL:-450}
SMOKE=${SMOKE:-0}

if ! command -v carousel >/dev/null; then
    echo "longlag_grid.sh: carousel is not on PATH (source .venv/bin/activate)" >&2
    exit 2
fi
if [ "$WORKERS" -lt 3 ]; then
    echo "longlag_grid.sh: WORKERS must be at least 3, got $WORKERS" >&2
    exit 2
fi
if [ "$WORKERS" -ge 8 ]; then
    WA=3 WB=3
else
    WA=1 WB=1
fi
WC=$((WORKERS - WA - WB))

# budgets: sequences per run, seconds per run (safety cap), seeds, test sequences, lags
if [ "$SMOKE" = 1 ]; then
    SEEDS=1 TEST=64
    SK_SEQ=2000 SK_SEC=30
    SGD_SEQ=2000 SGD_SEC=30
    OM_SEQ=2000 OM_SEC=30
    ADD_SEQ=2000 ADD_LAGS=12,25
    VAR_SEQ=1000 VAR_SEC=30
    LONG_T=25 SK_T=20
else
    SEEDS=3 TEST=2560
    SK_SEQ=3000000 SK_SEC=380
    SGD_SEQ=1000000 SGD_SEC=200
    OM_SEQ=600000 OM_SEC=150
    ADD_SEQ=150000 ADD_LAGS=12,25,50,100
    VAR_SEQ=150000 VAR_SEC=120
    LONG_T=100 SK_T=80
fi

START=$(date +%s)
DEADLINE=$((START + TOTAL))
left() {  # seconds until the deadline, less a margin for testing and writing the report
    local s=$((DEADLINE - $(date +%s) - 20))
    if [ "$s" -lt 1 ]; then s=1; fi
    echo "$s"
}

study() {  # study OUTNAME WORKERS ARGS...: one grid, logged to OUT/OUTNAME.log
    local name=$1 workers=$2
    shift 2
    mkdir -p "$OUT/$name"
    local cmd=(carousel study long-lag "$@" --seeds "$SEEDS" --test-size "$TEST"
        --time-budget "$(left)" --workers "$workers" --out "$OUT/$name")
    echo "[$(date +%T)] $name: ${cmd[*]}" | tee -a "$OUT/$name.log"
    "${cmd[@]}" >>"$OUT/$name.log" 2>&1
    echo "[$(date +%T)] $name: done ($(find "$OUT/$name/cells" -name '*.json' | wc -l) runs on disk)"
}

mkdir -p "$OUT"
echo "longlag_grid.sh: $WORKERS workers (A $WA, B $WB, C $WC), TOTAL ${TOTAL}s, SMOKE=$SMOKE," \
    "out $OUT, $(nproc) CPUs"

chain_a() {
    study longlag-sutskever "$WA" --models rnn-sutskever2013 --tasks addition-martens2011 \
        --T "$SK_T" --max-sequences "$SK_SEQ" --cell-seconds "$SK_SEC"
}
chain_b() {
    study longlag-rnn-sgd-1M "$WB" --models rnn-sgd --tasks adding-1997 --T "$LONG_T" \
        --max-sequences "$SGD_SEQ" --cell-seconds "$SGD_SEC"
    study longlag-order-mult "$WB" --models lstm,gru \
        --tasks temporal-order-1997,temporal-order-3-1997,multiplication-1997 --T "$LONG_T" \
        --max-sequences "$OM_SEQ" --cell-seconds "$OM_SEC"
    study longlag-mult-lr2e-3 "$WB" --models lstm,gru --tasks multiplication-1997 --T "$LONG_T" \
        --set lstm.lr=0.002 --set gru.lr=0.002 --max-sequences "$OM_SEQ" --cell-seconds "$OM_SEC"
}
chain_c() {
    study longlag-adding "$WC" --preset default --T "$ADD_LAGS" --max-sequences "$ADD_SEQ"
    study longlag-variants "$WC" \
        --models lstm-NP,lstm-vanilla,lstm-NIG,lstm-NFG,lstm-NOG,lstm-NIAF,lstm-NOAF,lstm-CIFG,lstm-FGR,lstm-LN \
        --tasks adding-1997 --T "$LONG_T" --max-sequences "$VAR_SEQ" --cell-seconds "$VAR_SEC"
}

chain_a &
PID_A=$!
chain_b &
PID_B=$!
status=0
chain_c || status=1
wait "$PID_A" || status=1
wait "$PID_B" || status=1

echo "longlag_grid.sh: finished in $(($(date +%s) - START)) s (status $status)"
for name in longlag-adding longlag-rnn-sgd-1M longlag-order-mult longlag-mult-lr2e-3 \
    longlag-sutskever longlag-variants; do
    tail -n 3 "$OUT/$name.log" | grep -q "not finished" && echo "  $name: some runs not finished; run again to resume"
done
exit "$status"
