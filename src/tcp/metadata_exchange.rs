//! Istio's TCP metadata exchange (`istio.metadata_exchange`, ALPN `istio-peer-exchange`): when a
//! TLS connection negotiated the filter's protocol, each end writes one frame before any
//! application byte and reads the peer's frame off the front of what it receives, so Istio
//! sidecars know which workload is on the other end:
//!
//! ```text
//! u32 magic 0x3D230467 | u32 length | google.protobuf.Any{Struct{
//!     "x-envoy-peer-metadata": <node metadata, FlatNode subset>, "x-envoy-peer-metadata-id": <node id>}}
//! ```
//! (big-endian; the Struct serialized deterministically, i.e. map keys sorted). As in istio/proxy, a
//! peer whose stream does not start with the magic has no exchange filter: its bytes pass through
//! untouched; a frame that does not decode is dropped after its header and the rest passes through.
//!
//! Owns: the frame (ours, built once from the bootstrap node; the peer's, parsed), the node
//! metadata value the HTTP exchange sends, and Envoy's `metadata_exchange.*` stats. Must not choose ALPN (the TLS contexts do) or interpret the peer's
//! metadata beyond decoding it.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{value::Kind as EnvoyKind, Struct as EnvoyStruct};
use prost::Message;
use prost_types::{value::Kind, Struct, Value};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::telemetry::stats::{Counter, Store};

const MAGIC: u32 = 0x3D23_0467;
const HEADER_LEN: usize = 8;
const PEER_METADATA: &str = "x-envoy-peer-metadata";
const PEER_METADATA_ID: &str = "x-envoy-peer-metadata-id";
const STRUCT_TYPE_URL: &str = "type.googleapis.com/google.protobuf.Struct";
/// The largest peer frame buffered. istio/proxy waits for any announced length; node metadata is
/// a few hundred bytes, and a bound keeps a hostile peer from making us buffer without limit.
const MAX_FRAME: usize = 64 * 1024;

/// Node metadata keys istio/proxy carries in the frame (its `FlatNode` schema), in three shapes.
const STRING_KEYS: [&str; 8] =
    ["NAME", "NAMESPACE", "OWNER", "WORKLOAD_NAME", "ISTIO_VERSION", "MESH_ID", "CLUSTER_ID", "APP_CONTAINERS"];
const MAP_KEYS: [&str; 2] = ["LABELS", "PLATFORM_METADATA"];

/// Envoy's `metadata_exchange.*` counters (one scope for both directions, as in istio/proxy).
#[derive(Debug)]
pub struct ExchangeStats {
    pub alpn_protocol_found: Arc<Counter>,
    pub alpn_protocol_not_found: Arc<Counter>,
    pub initial_header_not_found: Arc<Counter>,
    pub header_not_found: Arc<Counter>,
    pub metadata_added: Arc<Counter>,
}

/// This proxy's side of the exchange: its frame and the stats, and the same metadata as Istio's
/// HTTP exchange carries it (`x-envoy-peer-metadata`: the Struct, deterministically serialized,
/// base64; `x-envoy-peer-metadata-id`: the node id), for `http::peer_metadata`.
#[derive(Debug)]
pub struct LocalExchange {
    frame: Vec<u8>,
    pub stats: ExchangeStats,
    pub header_metadata: Option<http::HeaderValue>,
    pub header_id: Option<http::HeaderValue>,
}

/// What the peer said about itself.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PeerNode {
    pub id: Option<String>,
    pub metadata: Struct,
}

impl PeerNode {
    /// A string field of the peer's metadata (`NAME`, `NAMESPACE`, `WORKLOAD_NAME`, ...).
    pub fn field(&self, key: &str) -> Option<&str> {
        match self.metadata.fields.get(key)?.kind.as_ref()? {
            Kind::StringValue(s) => Some(s),
            _ => None,
        }
    }
}

impl LocalExchange {
    pub fn new(node: &Node, store: &Store) -> Self {
        let c = |n: &str| store.counter(&format!("metadata_exchange.{n}"));
        use base64::Engine;
        let metadata = node.metadata.as_ref().map(flat_node).unwrap_or_default().encode_to_vec();
        LocalExchange {
            header_metadata: http::HeaderValue::from_str(&base64::engine::general_purpose::STANDARD.encode(metadata))
                .ok(),
            header_id: Some(node.id.as_str())
                .filter(|id| !id.is_empty())
                .and_then(|id| http::HeaderValue::from_str(id).ok()),
            frame: encode_frame(node),
            stats: ExchangeStats {
                alpn_protocol_found: c("alpn_protocol_found"),
                alpn_protocol_not_found: c("alpn_protocol_not_found"),
                initial_header_not_found: c("initial_header_not_found"),
                header_not_found: c("header_not_found"),
                metadata_added: c("metadata_added"),
            },
        }
    }

    /// Starts the exchange on a connection whose filter expects `protocol`: when the connection
    /// negotiated it, our frame is written now and the peer's is taken off the front of what is
    /// read; otherwise the connection passes through untouched.
    pub async fn start<S>(
        self: &Arc<Self>,
        mut stream: S,
        negotiated: Option<&[u8]>,
        protocol: &str,
    ) -> std::io::Result<ExchangeStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if negotiated != Some(protocol.as_bytes()) {
            self.stats.alpn_protocol_not_found.inc();
            return Ok(ExchangeStream { inner: stream, read: ReadState::Done, local: self.clone(), peer: None });
        }
        self.stats.alpn_protocol_found.inc();
        stream.write_all(&self.frame).await?;
        stream.flush().await?;
        self.stats.metadata_added.inc();
        Ok(ExchangeStream { inner: stream, read: ReadState::Frame(Vec::new()), local: self.clone(), peer: None })
    }
}

/// Our frame: the node's FlatNode subset and id, exactly as istio/proxy writes it.
fn encode_frame(node: &Node) -> Vec<u8> {
    let mut fields = BTreeMap::new();
    fields.insert(PEER_METADATA.to_string(), struct_value(node.metadata.as_ref().map(flat_node).unwrap_or_default()));
    if !node.id.is_empty() {
        fields.insert(PEER_METADATA_ID.to_string(), string_value(node.id.clone()));
    }
    let any = prost_types::Any { type_url: STRUCT_TYPE_URL.into(), value: Struct { fields }.encode_to_vec() };
    let body = any.encode_to_vec();
    let mut frame = Vec::with_capacity(HEADER_LEN + body.len());
    frame.extend_from_slice(&MAGIC.to_be_bytes());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// The keys istio/proxy keeps (through its FlatNode flatbuffer): strings as strings (a non-string
/// becomes ""), label maps as string maps, and maps only when they have entries.
fn flat_node(metadata: &EnvoyStruct) -> Struct {
    let as_string = |v: &envoy_types::pb::google::protobuf::Value| match &v.kind {
        Some(EnvoyKind::StringValue(s)) => s.clone(),
        _ => String::new(),
    };
    let mut out = BTreeMap::new();
    for key in STRING_KEYS {
        if let Some(v) = metadata.fields.get(key) {
            out.insert(key.to_string(), string_value(as_string(v)));
        }
    }
    for key in MAP_KEYS {
        let Some(Some(EnvoyKind::StructValue(m))) = metadata.fields.get(key).map(|v| &v.kind) else { continue };
        if m.fields.is_empty() {
            continue;
        }
        let map = m.fields.iter().map(|(k, v)| (k.clone(), string_value(as_string(v)))).collect();
        out.insert(key.to_string(), struct_value(Struct { fields: map }));
    }
    Struct { fields: out }
}

fn string_value(s: String) -> Value {
    Value { kind: Some(Kind::StringValue(s)) }
}

fn struct_value(s: Struct) -> Value {
    Value { kind: Some(Kind::StructValue(s)) }
}

/// What the front of the received bytes holds.
#[derive(Debug, PartialEq)]
enum Parsed {
    NeedMore,
    /// A whole frame of `len` bytes.
    Frame(usize, PeerNode),
    /// Not the magic: the peer has no exchange filter; every byte is the application's.
    NoMagic,
    /// The magic, but the payload is unusable: the header is dropped, the rest passes through.
    BadPayload,
}

fn parse(buf: &[u8]) -> Parsed {
    let Some(header) = buf.get(..HEADER_LEN) else { return Parsed::NeedMore };
    let (magic, len) = header.split_at(4);
    if magic != MAGIC.to_be_bytes() {
        return Parsed::NoMagic;
    }
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if len > MAX_FRAME {
        return Parsed::BadPayload;
    }
    let Some(body) = buf.get(HEADER_LEN..HEADER_LEN + len) else { return Parsed::NeedMore };
    let Ok(any) = prost_types::Any::decode(body) else { return Parsed::BadPayload };
    if any.type_url != STRUCT_TYPE_URL {
        return Parsed::BadPayload;
    }
    let Ok(mut data) = Struct::decode(any.value.as_slice()) else { return Parsed::BadPayload };
    let id = match data.fields.remove(PEER_METADATA_ID).and_then(|v| v.kind) {
        Some(Kind::StringValue(s)) => Some(s),
        _ => None,
    };
    let metadata = match data.fields.remove(PEER_METADATA).and_then(|v| v.kind) {
        Some(Kind::StructValue(s)) => s,
        _ => Struct::default(),
    };
    Parsed::Frame(HEADER_LEN + len, PeerNode { id, metadata })
}

enum ReadState {
    /// Collecting the peer's frame; every byte read so far.
    Frame(Vec<u8>),
    /// Bytes read while looking for the frame that belong to the application, and how many of
    /// them were handed out.
    Replay(Vec<u8>, usize),
    Done,
}

/// A connection in an exchange: reads come without the peer's frame, writes pass through.
pub struct ExchangeStream<S> {
    inner: S,
    read: ReadState,
    local: Arc<LocalExchange>,
    peer: Option<PeerNode>,
}

impl<S> ExchangeStream<S> {
    /// The peer's metadata, once its frame has been read.
    pub fn peer(&self) -> Option<&PeerNode> {
        self.peer.as_ref()
    }
}

impl<S: AsyncRead + Unpin> ExchangeStream<S> {
    /// Reads until the frame is complete or known to be absent, then decides what is replayed.
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        loop {
            let ReadState::Frame(buf) = &mut self.read else { return Poll::Ready(Ok(())) };
            let stats = &self.local.stats;
            let (replay_from, buf) = match parse(buf) {
                Parsed::NeedMore => {
                    let mut chunk = [0u8; 4096];
                    let mut rb = ReadBuf::new(&mut chunk);
                    ready!(Pin::new(&mut self.inner).poll_read(cx, &mut rb))?;
                    if !rb.filled().is_empty() {
                        buf.extend_from_slice(rb.filled());
                        continue;
                    }
                    // The peer closed mid-frame: what it sent is handed on as it is.
                    (0, std::mem::take(buf))
                }
                Parsed::Frame(len, peer) => {
                    tracing::debug!(peer_id = ?peer.id, workload = ?peer.field("WORKLOAD_NAME"), "metadata exchanged");
                    self.peer = Some(peer);
                    (len, std::mem::take(buf))
                }
                Parsed::NoMagic => {
                    stats.initial_header_not_found.inc();
                    tracing::debug!("istio-peer-exchange negotiated but the peer sent no metadata frame");
                    (0, std::mem::take(buf))
                }
                Parsed::BadPayload => {
                    stats.header_not_found.inc();
                    tracing::debug!("istio-peer-exchange frame without usable metadata");
                    (HEADER_LEN, std::mem::take(buf))
                }
            };
            self.read = if replay_from < buf.len() { ReadState::Replay(buf, replay_from) } else { ReadState::Done };
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ExchangeStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_frame(cx))?;
        match &mut this.read {
            ReadState::Replay(buf, pos) => {
                let n = out.remaining().min(buf.len() - *pos);
                out.put_slice(&buf[*pos..*pos + n]);
                *pos += n;
                if *pos == buf.len() {
                    this.read = ReadState::Done;
                }
                Poll::Ready(Ok(()))
            }
            _ => Pin::new(&mut this.inner).poll_read(cx, out),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ExchangeStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn node() -> Node {
        let json = serde_json::json!({
            "id": "sidecar~10.0.0.1~a-1.ns~ns.svc.cluster.local",
            "metadata": {"NAME": "a-1", "NAMESPACE": "ns", "WORKLOAD_NAME": "a", "LABELS": {"app": "a", "version": "v1"},
                         "PLATFORM_METADATA": {}, "INSTANCE_IPS": "10.0.0.1", "ISTIO_VERSION": 1.0}
        });
        crate::bootstrap::decode::from_json(&json, Default::default()).expect("node")
    }

    #[test]
    fn frame_carries_the_flat_node_subset_and_id() {
        let frame = encode_frame(&node());
        let Parsed::Frame(len, peer) = parse(&frame) else { panic!("not a frame") };
        assert_eq!(len, frame.len());
        assert_eq!(peer.id.as_deref(), Some("sidecar~10.0.0.1~a-1.ns~ns.svc.cluster.local"));
        let keys: Vec<_> = peer.metadata.fields.keys().cloned().collect();
        // INSTANCE_IPS is not in the frame; an empty map is dropped; a number becomes "".
        assert_eq!(keys, ["ISTIO_VERSION", "LABELS", "NAME", "NAMESPACE", "WORKLOAD_NAME"]);
        assert_eq!(peer.field("ISTIO_VERSION"), Some(""));
        assert_eq!(peer.field("WORKLOAD_NAME"), Some("a"));
    }

    #[test]
    fn parse_outcomes() {
        let frame = encode_frame(&node());
        assert_eq!(parse(&frame[..5]), Parsed::NeedMore);
        assert_eq!(parse(&frame[..frame.len() - 1]), Parsed::NeedMore);
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Parsed::NoMagic);
        let mut bad = MAGIC.to_be_bytes().to_vec();
        bad.extend_from_slice(&3u32.to_be_bytes());
        bad.extend_from_slice(b"\xff\xff\xff");
        assert_eq!(parse(&bad), Parsed::BadPayload);
        let mut huge = MAGIC.to_be_bytes().to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(parse(&huge), Parsed::BadPayload);
    }

    async fn exchange_over_duplex(peer_sends: Vec<u8>) -> (Vec<u8>, Vec<u8>, Option<PeerNode>) {
        let local = Arc::new(LocalExchange::new(&node(), &Store::default()));
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        theirs.write_all(&peer_sends).await.expect("peer write");
        theirs.shutdown().await.expect("peer shutdown");
        let mut stream = local.start(ours, Some(b"istio-peer-exchange"), "istio-peer-exchange").await.expect("start");
        let mut app = Vec::new();
        stream.read_to_end(&mut app).await.expect("read");
        let peer = stream.peer().cloned();
        drop(stream);
        let mut wire = Vec::new();
        theirs.read_to_end(&mut wire).await.expect("read ours");
        (app, wire, peer)
    }

    #[tokio::test]
    async fn strips_the_peer_frame_and_writes_ours_first() {
        let mut sent = encode_frame(&node());
        sent.extend_from_slice(b"hello");
        let (app, wire, peer) = exchange_over_duplex(sent).await;
        assert_eq!(app, b"hello");
        assert_eq!(wire, encode_frame(&node()));
        assert_eq!(peer.and_then(|p| p.id), Some("sidecar~10.0.0.1~a-1.ns~ns.svc.cluster.local".into()));
    }

    #[tokio::test]
    async fn a_peer_without_the_filter_passes_through() {
        let (app, _, peer) = exchange_over_duplex(b"plain bytes, no frame".to_vec()).await;
        assert_eq!(app, b"plain bytes, no frame");
        assert!(peer.is_none());
        let (app, _, _) = exchange_over_duplex(b"abc".to_vec()).await;
        assert_eq!(app, b"abc", "a stream shorter than a header is handed on");
    }
}
