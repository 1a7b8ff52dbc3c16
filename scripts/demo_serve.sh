#!/usr/bin/env bash
# The serving half of `make demo`: export the trained checkpoint into a new Triton repository (the
# export adds the ensembles and steps of model_repository/, as for a pip-installed package), start
# `boxinst serve`, segment the sample images through the gRPC client (overlays + images/s),
# and stop the server, also when interrupted (Ctrl-C) or when a step fails.
set -euo pipefail
BOXINST=${BOXINST:-.venv/bin/boxinst}
DEMO=${DEMO:-outputs/demo}
GRPC_PORT=${GRPC_PORT:-8001}
HTTP_PORT=${HTTP_PORT:-8000}
METRICS_PORT=${METRICS_PORT:-8002}

rm -rf "$DEMO/repository"
mkdir -p "$DEMO"
"$BOXINST" export --checkpoint "$DEMO/run/final.pt" --triton "$DEMO/repository" --flavour cpu

"$BOXINST" serve --repository "$DEMO/repository" --grpc-port "$GRPC_PORT" --http-port "$HTTP_PORT" \
    --metrics-port "$METRICS_PORT" --log "$DEMO/tritonserver.log" > "$DEMO/serve.log" 2>&1 &
SERVER=$!
stop_server() {
    if kill -0 "$SERVER" 2>/dev/null; then
        echo "stopping the server (pid $SERVER)"
        kill -INT "$SERVER" 2>/dev/null || true
        wait "$SERVER" 2>/dev/null || true
    fi
}
trap stop_server EXIT
trap 'exit 130' INT TERM

echo "waiting for boxinst serve on 127.0.0.1:$GRPC_PORT (log: $DEMO/serve.log)"
for _ in $(seq 1 360); do
    if grep -q "boxinst serving" "$DEMO/serve.log" 2>/dev/null; then break; fi
    if ! kill -0 "$SERVER" 2>/dev/null; then cat "$DEMO/serve.log"; exit 1; fi
    sleep 0.5
done
grep -q "boxinst serving" "$DEMO/serve.log" || { echo "server did not come up"; cat "$DEMO/serve.log"; exit 1; }

"$BOXINST" segment --coco "$DEMO/shapes/val.json" --limit 12 --url "127.0.0.1:$GRPC_PORT" --out "$DEMO/overlays"
