#!/usr/bin/env bash
# mTLS benchmark: Remora next to Envoy on the same machine, each with the same Envoy bootstrap.
#
#   tests/bench/mtls.sh                   # ~2 min
#   DUR=5 tests/bench/mtls.sh             # quick run
#
# Certificates are Istio's shape: ECDSA P-256, a SPIFFE URI SAN, one mesh CA (made with openssl).
# The origin is nginx (one worker, `return 200`) on core 1 with the load generators; the proxy
# under test runs with --concurrency 1, pinned to core 0.
#
# (a) Full handshakes: `openssl s_time -new` (a new TLS 1.3 session per connection with the
#     client's certificate, closed once the handshake is done) against an inbound listener that
#     requires and verifies the client's certificate. Reported: handshakes per second achieved, and the proxy's CPU time per handshake
#     (utime+stime from /proc), whose inverse is full handshakes per second on one core.
# (b) CPU per request over mTLS: a mesh hop of two sidecars of the same kind (client sidecar:
#     plaintext in, mTLS out with a pooled connection; server sidecar: mTLS in, plaintext to nginx),
#     both pinned to core 0, driven by `h2load --h1` keep-alive; CPU of both sidecars per request.
#
# Quote ratios (Remora / Envoy) from one run: the machine is shared and noisy.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
DUR=${DUR:-15}
CONNS=${CONNS:-16}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
OUT=${OUT:-${TMPDIR:-/tmp}/remora-bench-mtls/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
TICK=$(getconf CLK_TCK)

(cd "$repo" && cargo build --release --quiet)
REMORA="$repo/target/release/remora"
ENVOY=${ENVOY_BIN:-$repo/.venv/bin/envoy}
[ -x "$ENVOY" ] || { echo "no Envoy at $ENVOY (run tests/run.sh once, or set ENVOY_BIN)" >&2; exit 2; }
for tool in openssl h2load nginx taskset; do
  command -v "$tool" >/dev/null || { echo "$tool is required (apt-get install openssl nghttp2-client nginx util-linux)" >&2; exit 2; }
done

PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }

# --- certificates (Istio's shape) -------------------------------------------------------------
cd "$OUT"
openssl ecparam -name prime256v1 -genkey -noout -out ca.key
openssl req -x509 -new -key ca.key -subj "/O=cluster.local" -days 2 -out ca.pem 2>/dev/null
issue() { # name spiffe-id
  openssl ecparam -name prime256v1 -genkey -noout -out "$1.key.ec"
  openssl pkcs8 -topk8 -nocrypt -in "$1.key.ec" -out "$1.key"
  openssl req -new -key "$1.key" -subj "/" -out "$1.csr" 2>/dev/null
  printf 'subjectAltName=URI:%s\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n' "$2" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile "$1.ext" -out "$1.pem" 2>/dev/null
}
issue server spiffe://cluster.local/ns/default/sa/server
issue client spiffe://cluster.local/ns/default/sa/client

# --- origin -------------------------------------------------------------------------------------
ORIGIN=$(free_port)
cat > nginx.conf <<EOF
worker_processes 1; daemon off; pid $OUT/nginx.pid; error_log $OUT/nginx.err;
events { worker_connections 4096; }
http { access_log off; server { listen 127.0.0.1:$ORIGIN; keepalive_requests 1000000; location / { return 200 "hello mesh\n"; } } }
EOF
taskset -c "$LOAD_CPU" nginx -c "$OUT/nginx.conf" -p "$OUT" & PIDS+=($!)
wait_port "$ORIGIN"

# --- bootstraps (JSON, read by both proxies) ----------------------------------------------------
downstream_tls() { # require client certs, mesh validation
  cat <<EOF
{"name": "envoy.transport_sockets.tls", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
 "require_client_certificate": true,
 "common_tls_context": {"tls_params": {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3"},
   "alpn_protocols": ["h2", "http/1.1"],
   "tls_certificates": [{"certificate_chain": {"filename": "$OUT/server.pem"}, "private_key": {"filename": "$OUT/server.key"}}],
   "validation_context": {"trusted_ca": {"filename": "$OUT/ca.pem"}, "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"prefix": "spiffe://cluster.local/"}}]}}}}
EOF
}
upstream_tls() {
  cat <<EOF
{"name": "envoy.transport_sockets.tls", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
 "sni": "outbound_.80_._.server.default.svc.cluster.local",
 "common_tls_context": {"alpn_protocols": ["istio", "http/1.1"],
   "tls_certificates": [{"certificate_chain": {"filename": "$OUT/client.pem"}, "private_key": {"filename": "$OUT/client.key"}}],
   "validation_context": {"trusted_ca": {"filename": "$OUT/ca.pem"}, "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": "spiffe://cluster.local/ns/default/sa/server"}}]}}}}
EOF
}
hcm() { # stat-prefix cluster
  cat <<EOF
{"name": "envoy.filters.network.http_connection_manager", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
 "stat_prefix": "$1", "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "$2"}}]}]},
 "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}
EOF
}
cluster() { # name port [transport_socket]
  local ts=""; [ $# -ge 3 ] && ts=", \"transport_socket\": $3"
  echo "{\"name\": \"$1\", \"type\": \"STATIC\", \"connect_timeout\": \"1s\", \"load_assignment\": {\"cluster_name\": \"$1\", \"endpoints\": [{\"lb_endpoints\": [{\"endpoint\": {\"address\": {\"socket_address\": {\"address\": \"127.0.0.1\", \"port_value\": $2}}}}]}]}$ts}"
}
server_bootstrap() { # admin inbound-port
  cat <<EOF
{"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": $1}}},
 "static_resources": {
  "listeners": [{"name": "inbound", "address": {"socket_address": {"address": "127.0.0.1", "port_value": $2}},
                 "filter_chains": [{"filters": [$(hcm inbound app)], "transport_socket": $(downstream_tls)}]}],
  "clusters": [$(cluster app "$ORIGIN")]}}
EOF
}
client_bootstrap() { # admin outbound-port server-port
  cat <<EOF
{"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": $1}}},
 "static_resources": {
  "listeners": [{"name": "outbound", "address": {"socket_address": {"address": "127.0.0.1", "port_value": $2}},
                 "filter_chains": [{"filters": [$(hcm outbound mesh)]}]}],
  "clusters": [$(cluster mesh "$3" "$(upstream_tls)")]}}
EOF
}
start_proxy() { # kind config-file -> PID
  local bin=$REMORA; [ "$1" = envoy ] && bin=$ENVOY
  taskset -c "$PROXY_CPU" "$bin" -c "$2" --concurrency 1 -l error --disable-hot-restart --base-id "$RANDOM" > "$2.log" 2>&1 &
  echo $!
}

results=()
for kind in envoy remora; do
  # (a) full handshakes
  admin=$(free_port); port=$(free_port)
  server_bootstrap "$admin" "$port" > "$kind-server.json"
  pid=$(start_proxy "$kind" "$OUT/$kind-server.json"); PIDS+=("$pid")
  wait_port "$port"
  taskset -c "$LOAD_CPU" openssl s_time -connect "127.0.0.1:$port" -new -time 2 \
    -cert client.pem -key client.key -CAfile ca.pem > /dev/null 2>&1 || true   # warm-up
  before=$(cpu_ticks "$pid")
  taskset -c "$LOAD_CPU" openssl s_time -connect "127.0.0.1:$port" -new -time "$DUR" \
    -cert client.pem -key client.key -CAfile ca.pem > "$kind-s_time.txt" 2>&1 || true
  after=$(cpu_ticks "$pid")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  conns=$(awk '/connections in .* real seconds/ {print $1; exit}' "$kind-s_time.txt")
  [ -n "$conns" ] && [ "$conns" -gt 0 ] || { echo "$kind: s_time made no connections:"; cat "$kind-s_time.txt"; exit 1; }
  hs_rate=$(echo "$conns / $DUR" | bc -l)
  cpu_per_hs_us=$(echo "($after - $before) / $TICK / $conns * 1000000" | bc -l)

  # (b) CPU per request through a two-sidecar mTLS hop
  sadmin=$(free_port); sport=$(free_port); cadmin=$(free_port); cport=$(free_port)
  server_bootstrap "$sadmin" "$sport" > "$kind-hop-server.json"
  client_bootstrap "$cadmin" "$cport" "$sport" > "$kind-hop-client.json"
  spid=$(start_proxy "$kind" "$OUT/$kind-hop-server.json"); PIDS+=("$spid")
  cpid=$(start_proxy "$kind" "$OUT/$kind-hop-client.json"); PIDS+=("$cpid")
  wait_port "$sport"; wait_port "$cport"
  taskset -c "$LOAD_CPU" h2load --h1 -c "$CONNS" -D 2 "http://127.0.0.1:$cport/" > /dev/null 2>&1 || true   # warm-up
  before=$(( $(cpu_ticks "$spid") + $(cpu_ticks "$cpid") ))
  taskset -c "$LOAD_CPU" h2load --h1 -c "$CONNS" -D "$DUR" "http://127.0.0.1:$cport/" > "$kind-h2load.txt" 2>&1
  after=$(( $(cpu_ticks "$spid") + $(cpu_ticks "$cpid") ))
  kill "$spid" "$cpid"; wait "$spid" "$cpid" 2>/dev/null || true
  reqs=$(awk '/^requests:/ {print $8; exit}' "$kind-h2load.txt")   # succeeded
  failed=$(awk '/^requests:/ {print $10; exit}' "$kind-h2load.txt")
  rps=$(echo "$reqs / $DUR" | bc -l)
  cpu_per_req_us=$(echo "($after - $before) / $TICK / $reqs * 1000000" | bc -l)
  results+=("$kind $hs_rate $cpu_per_hs_us $rps $cpu_per_req_us $failed")
done

printf '\n%-8s %14s %16s %14s %20s %8s\n' proxy "handshakes/s" "cpu/handshake µs" "hop req/s" "hop cpu/request µs" failed
for r in "${results[@]}"; do
  set -- $r
  printf '%-8s %14.0f %16.0f %14.0f %20.1f %8s\n' "$1" "$2" "$3" "$4" "$5" "$6"
done
set -- ${results[0]}; e_hs=$2 e_cpu_hs=$3 e_rps=$4 e_cpu_req=$5
set -- ${results[1]}; r_hs=$2 r_cpu_hs=$3 r_rps=$4 r_cpu_req=$5
printf '\nRemora / Envoy: handshakes/s %.2f×, CPU per handshake %.2f× (one-core capacity %.2f×), hop req/s %.2f×, hop CPU per request %.2f×\n' \
  "$(echo "$r_hs / $e_hs" | bc -l)" "$(echo "$r_cpu_hs / $e_cpu_hs" | bc -l)" "$(echo "$e_cpu_hs / $r_cpu_hs" | bc -l)" \
  "$(echo "$r_rps / $e_rps" | bc -l)" "$(echo "$r_cpu_req / $e_cpu_req" | bc -l)"
echo "raw output: $OUT"
