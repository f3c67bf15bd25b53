#!/usr/bin/env bash
# The main job: install, fetch the real data, train and publish the default
# bundle, start the server, show real recommendations through the client,
# then keep serving in the foreground until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

ADDRESS_HOST="${BOOKVERSE_HOST:-127.0.0.1}"
PORT="${BOOKVERSE_PORT:-50051}"
METRICS_PORT="${BOOKVERSE_METRICS_PORT:-9464}"
DATASET="${BOOKVERSE_DATASET:-bookcrossing}"

start=$(date +%s)
bash scripts/install.sh train
echo "== install took $(( $(date +%s) - start )) s"
export PATH="$PWD/.venv/bin:$PATH"

bookverse-train fetch --data-dir data
bookverse-train train --dataset "$DATASET" --data-dir data --artifacts artifacts

mkdir -p var
bookverse-serve --artifacts artifacts --events-db var/events.db \
  --host "$ADDRESS_HOST" --port "$PORT" --metrics-port "$METRICS_PORT" &
server_pid=$!
trap 'kill -TERM $server_pid 2>/dev/null; wait $server_pid; exit $?' INT TERM

address="$ADDRESS_HOST:$PORT"
for _ in $(seq 1 120); do
  if bookverse-client --address "$address" health >/dev/null 2>&1; then break; fi
  if ! kill -0 "$server_pid" 2>/dev/null; then echo "server exited"; exit 1; fi
  sleep 0.5
done

echo "== real readers of the published bundle"
readers=$(bookverse-train readers --artifacts artifacts --count 3)
for reader in $readers; do
  bookverse-client --address "$address" recommend "$reader" --n 5
done

echo "== an unknown reader, looking at 'The Lovely Bones' (ISBN 0316666343)"
bookverse-client --address "$address" recommend new-reader-demo --n 5 \
  --session 0316666343

first=${readers%% *}
echo "== reader $first buys 'The Da Vinci Code' (ISBN 0385504209); next answer:"
bookverse-client --address "$address" track "$first" 0385504209 --type purchase
bookverse-client --address "$address" recommend "$first" --n 5
bookverse-client --address "$address" explain "$first" 0385504209

cat <<MSG

== BookVerse Recommendations is serving on $address (total $(( $(date +%s) - start )) s)
   gRPC (reflection on):  grpcurl -plaintext $address list
                          .venv/bin/bookverse-client --address $address recommend 11676 --n 5
   health:                .venv/bin/bookverse-client --address $address health
   Prometheus metrics:    http://127.0.0.1:$METRICS_PORT/metrics
   Ctrl-C stops it.
MSG
wait "$server_pid"
