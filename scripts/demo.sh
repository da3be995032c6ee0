#!/usr/bin/env bash
# One command to see it work on a fresh machine: installs what is missing,
# starts Kafka and Redis, creates the topics, starts the worker, runs the
# generator, and shows scores arriving. The services keep running afterwards
# (stop them with: .venv/bin/healthscore services stop).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
hs=.venv/bin/healthscore
$hs services start
$hs topics

mkdir -p .data
log=.data/demo-worker.log
if curl -fs "http://127.0.0.1:${HEALTHSCORE_WEB_PORT:-6066}/metrics" >/dev/null 2>&1; then
  echo "A worker already answers on port ${HEALTHSCORE_WEB_PORT:-6066}; using it."
  worker_pid=""
else
  echo "Starting the worker (log: $log)"
  $hs worker >"$log" 2>&1 &
  worker_pid=$!
  trap '[ -n "$worker_pid" ] && kill "$worker_pid" 2>/dev/null; wait 2>/dev/null' EXIT
  for _ in $(seq 1 120); do
    grep -q "\[^Worker\]: Ready" "$log" 2>/dev/null && break
    kill -0 "$worker_pid" 2>/dev/null || { echo "The worker exited; see $log"; tail -20 "$log"; exit 1; }
    sleep 0.5
  done
fi

echo "Generating 30 days of history for 200 customers, compressed into 20 s..."
$hs generate --customers 200 --rate 300 --duration 20 --history-days 30 --seed "${SEED:-$RANDOM}" &
generator=$!
sleep 12  # let some history build up: early scores are all "healthy"
echo "Scores as they arrive (customer, score, band, churn risk, components):"
$hs watch --limit 40
wait "$generator"
sleep 2
echo
echo "Worker metrics that moved (all of them: http://127.0.0.1:${HEALTHSCORE_WEB_PORT:-6066}/metrics):"
curl -s "http://127.0.0.1:${HEALTHSCORE_WEB_PORT:-6066}/metrics" \
  | grep -E "^healthscore_(events_total|scores_published_total|dead_letters_total|alerts_raised_total|alerts_suppressed_total)" \
  | grep -v " 0.0$" || true
echo
echo "Lookups: curl -s 127.0.0.1:${HEALTHSCORE_WEB_PORT:-6066}/customers/at-risk?limit=5"
curl -s "http://127.0.0.1:${HEALTHSCORE_WEB_PORT:-6066}/customers/at-risk?limit=5"; echo
echo
api="http://127.0.0.1:${HEALTHSCORE_WEB_PORT:-6066}"
echo "The 10 riskiest customers still to save (GET /customers/at-risk?limit=10: live customers only;"
echo "who already left: /customers/churned), with the next step of their latest alert:"
{
  printf 'customer\tscore\tband\tchurn risk\tconfidence\tnext step\n'
  curl -s "$api/customers/at-risk?limit=10" | jq -r '.customers[].customer_id' | while read -r customer; do
    curl -s "$api/customers/$customer/health" | jq -r '[.customer_id, .score, .band, .churn_risk, .confidence,
      ((.recent_alerts[0] // {}) | if .recommended_action then "\(.action_owner): \(.recommended_action)" else "no alert yet" end)] | @tsv'
  done
} | column -t -s $'\t'
