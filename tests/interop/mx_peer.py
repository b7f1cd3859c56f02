#!/usr/bin/env python3
"""An Istio TCP metadata-exchange peer written independently of Remora, for tests/mesh_interop.rs.

It speaks istio-proxy's `istio.metadata_exchange` network filter over mutual TLS: when ALPN
`istio-peer-exchange` is negotiated, each end writes

    u32 magic 0x3D230467 | u32 length | google.protobuf.Any{Struct{"x-envoy-peer-metadata": {...},
                                                                  "x-envoy-peer-metadata-id": id}}

(big-endian, deterministic protobuf serialization, as istio-proxy's C++ does) before any
application byte, and reads the peer's frame off the front of what it receives. Frames are built
and parsed with the `protobuf` package, never with Remora's code.

  client: connect to --port, write our frame and --payload, read the peer's frame, then read the
          echoed payload; print one JSON object describing what happened.
  server: listen on 127.0.0.1:0 (print "listening on PORT"), for each connection read the peer's
          frame, write ours, then echo the application bytes; append a JSON line per connection to
          --record.
"""

import argparse
import json
import os
import socket
import ssl
import struct
import sys
import threading

# The pure-Python protobuf sorts map keys as C++ protobuf (istio-proxy) does when serializing
# deterministically. The default upb backend puts "x-envoy-peer-metadata-id" before its prefix
# "x-envoy-peer-metadata", which is valid protobuf but not istio-proxy's bytes.
os.environ["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = "python"

from google.protobuf import any_pb2, json_format, struct_pb2  # noqa: E402

MAGIC = 0x3D230467
STRUCT_URL = "type.googleapis.com/google.protobuf.Struct"
NODE_METADATA = {
    "NAME": "python-peer-0",
    "NAMESPACE": "default",
    "WORKLOAD_NAME": "python-peer",
    "LABELS": {"app": "python-peer", "version": "v1"},
    "CLUSTER_ID": "Kubernetes",
}
NODE_ID = "sidecar~127.0.0.9~python-peer-0.default~default.svc.cluster.local"


def our_frame():
    data = struct_pb2.Struct()
    data.fields["x-envoy-peer-metadata"].struct_value.update(NODE_METADATA)
    data.fields["x-envoy-peer-metadata-id"].string_value = NODE_ID
    wrapped = any_pb2.Any(type_url=STRUCT_URL, value=data.SerializeToString(deterministic=True))
    body = wrapped.SerializeToString(deterministic=True)
    return struct.pack(">II", MAGIC, len(body)) + body


def recv_exact(sock, n):
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise EOFError(f"peer closed after {len(out)} of {n} bytes")
        out += chunk
    return out


def read_frame(sock):
    magic, size = struct.unpack(">II", recv_exact(sock, 8))
    if magic != MAGIC:
        return {"magic_ok": False}
    body = recv_exact(sock, size)
    wrapped = any_pb2.Any.FromString(body)
    data = struct_pb2.Struct.FromString(wrapped.value)
    # istio-proxy serializes deterministically; a byte-identical re-encoding shows the peer does too.
    canonical = (
        data.SerializeToString(deterministic=True) == wrapped.value
        and any_pb2.Any(type_url=wrapped.type_url, value=wrapped.value).SerializeToString(deterministic=True) == body
    )
    as_dict = json_format.MessageToDict(data)
    return {
        "magic_ok": True,
        "type_url": wrapped.type_url,
        "deterministic": canonical,
        "id": as_dict.get("x-envoy-peer-metadata-id"),
        "metadata": as_dict.get("x-envoy-peer-metadata"),
        "keys": sorted(as_dict.keys()),
    }


def tls_context(args, server):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.load_verify_locations(args.ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    if not server:
        ctx.check_hostname = False  # SPIFFE identities are URI SANs; the chain is still verified
    # As istiod writes them: the client offers exchange first, the server's TCP context lists it first.
    ctx.set_alpn_protocols(["istio-peer-exchange", "h2", "http/1.1"] if server else ["istio-peer-exchange", "istio"])
    return ctx


def client(args):
    ctx = tls_context(args, server=False)
    with socket.create_connection(("127.0.0.1", args.port), timeout=10) as raw:
        with ctx.wrap_socket(raw) as sock:
            alpn = sock.selected_alpn_protocol()
            result = {"alpn": alpn}
            if alpn == "istio-peer-exchange":
                sock.sendall(our_frame() + args.payload.encode())
                result["peer"] = read_frame(sock)
            else:
                sock.sendall(args.payload.encode())
            result["echo"] = recv_exact(sock, len(args.payload)).decode(errors="replace")
    print(json.dumps(result), flush=True)


def serve_one(conn, args, lock):
    record = {}
    try:
        record["alpn"] = conn.selected_alpn_protocol()
        if record["alpn"] == "istio-peer-exchange":
            record["peer"] = read_frame(conn)
            conn.sendall(our_frame())
        received = b""
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            received += chunk
            conn.sendall(chunk)
        record["received"] = received.decode(errors="replace")
    except Exception as e:  # recorded for the test to print
        record["error"] = repr(e)
    finally:
        with lock, open(args.record, "a") as f:
            f.write(json.dumps(record) + "\n")
        conn.close()


def server(args):
    ctx = tls_context(args, server=True)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    print(f"listening on {listener.getsockname()[1]}", flush=True)
    lock = threading.Lock()
    while True:
        raw, _ = listener.accept()
        try:
            conn = ctx.wrap_socket(raw, server_side=True)
        except ssl.SSLError as e:
            with lock, open(args.record, "a") as f:
                f.write(json.dumps({"error": repr(e)}) + "\n")
            continue
        threading.Thread(target=serve_one, args=(conn, args, lock), daemon=True).start()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["client", "server"])
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--port", type=int)
    p.add_argument("--payload", default="ping through the mesh")
    p.add_argument("--record")
    args = p.parse_args()
    (client if args.mode == "client" else server)(args)


if __name__ == "__main__":
    sys.exit(main())
