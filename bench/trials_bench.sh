#!/bin/bash
# One trial against two: the peer yardstick's requests (../shared/bench/peer: 100 and 1,000 lab
# results with the full prefetch, a HER2-negative patient), interleaved against `cds-service serve`
# (1 worker x 4 threads) with CDS_TRIALS=NCT06462092 and with both bundled LM trials.
# Prints each round's p50s and two / one. Usage, from the project root after make run/test:
#   bash bench/trials_bench.sh [ROUNDS] [REPS]
set -u
R=${1:-4}; N=${2:-150}
ROOT=$(pwd); BIN=$ROOT/.venv/bin; PEER=${PEER_DIR:-$ROOT/../shared/bench/peer}; W=$(mktemp -d)
[ -x "$BIN/cds-service" ] || { echo "run from the project root after make run/test (.venv missing)"; exit 2; }
[ -f "$PEER/bench.py" ] || { echo "the peer yardstick is not at $PEER (set PEER_DIR)"; exit 2; }
free_port() { "$BIN/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
(cd "$W" && for n in 100 1000; do "$BIN/python" "$PEER/make_req_full.py" $n; done)
declare -A URL; PIDS=""
for v in one=NCT06462092 two=NCT06462092,NCT01325207; do
  name=${v%%=*}; port=$(free_port)
  (cd "$W" && CDS_TRIALS=${v#*=} CDS_EVALUATION_DATE=2026-11-24 CDS_DATA_DIR="$W/data-$name" \
     exec "$BIN/cds-service" serve --port "$port" --workers 1 --threads 4) >"$W/$name.log" 2>&1 &
  PIDS="$PIDS $!"; URL[$name]=http://127.0.0.1:$port/cds-services/trial-eligibility
done
trap 'kill $PIDS 2>/dev/null; wait 2>/dev/null; rm -rf "$W"' EXIT
for name in one two; do  # ready when discovery answers
  for _ in $(seq 100); do curl -sf -o /dev/null "${URL[$name]%/trial-eligibility}" && break; sleep 0.2; done
done
p50() { "$BIN/python" "$PEER/bench.py" "$1" "$2" "$N" | grep -o 'p50=[0-9.]*' | cut -d= -f2; }
for n in 100 1000; do
  for r in $(seq "$R"); do
    one=$(p50 "${URL[one]}" "$W/full$n.json"); two=$(p50 "${URL[two]}" "$W/full$n.json")
    echo "n=$n round=$r one=${one}ms two=${two}ms two/one=$("$BIN/python" -c "print(round($two / $one, 2))")"
  done
done
