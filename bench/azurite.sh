# Sourced by the bench scripts: starts Azurite (from tests/azurite, installing it on first
# use) in memory on a free loopback port, sets PORT and AZ_PID, stops it and removes $WORK
# on exit (with any pids the caller adds to BENCH_PIDS). Flags as in the test harness, plus --silent (no access log) and a long
# keep-alive so 16 connections are not closed between requests.
start_azurite() {
  (cd "$ROOT/tests/azurite" && { [ -x node_modules/.bin/azurite-blob ] || npm ci --no-audit --no-fund --loglevel=error; })
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$ROOT/tests/azurite/node_modules/.bin/azurite-blob" --inMemoryPersistence --blobHost 127.0.0.1 \
    --blobPort "$PORT" --skipApiVersionCheck --loose --disableTelemetry --silent \
    --blobKeepAliveTimeout 120 --extentMemoryLimit 4096 &
  AZ_PID=$!
  BENCH_PIDS=${BENCH_PIDS:-}
  trap 'kill $AZ_PID $BENCH_PIDS 2>/dev/null; wait $AZ_PID 2>/dev/null; rm -rf "$WORK"' EXIT
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT/devstoreaccount1?comp=list" && return; sleep 0.1; done
  echo "Azurite did not start on port $PORT" >&2; return 1
}
