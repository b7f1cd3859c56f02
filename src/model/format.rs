//! Envoy's substitution format (`%DOWNSTREAM_REMOTE_ADDRESS%`, `%REQ(x-foo)%`, …) as used in header
//! values and direct-response bodies: parsed once at config time, rendered per request against a
//! [`FormatContext`] the data path provides.

use super::error::{FieldError, FieldResult};

/// What a request exposes to format strings. Implemented by the HTTP layer.
pub trait FormatContext {
    fn downstream_remote(&self) -> Option<std::net::SocketAddr>;
    fn downstream_direct_remote(&self) -> Option<std::net::SocketAddr> {
        self.downstream_remote()
    }
    fn downstream_local(&self) -> Option<std::net::SocketAddr>;
    fn request_header(&self, name: &str) -> Option<String>;
    fn response_header(&self, _name: &str) -> Option<String> {
        None
    }
    fn protocol(&self) -> &'static str;
    fn upstream_cluster(&self) -> Option<String> {
        None
    }
    fn upstream_remote(&self) -> Option<std::net::SocketAddr> {
        None
    }
    fn route_name(&self) -> Option<String> {
        None
    }
    fn response_code(&self) -> Option<u16> {
        None
    }
    fn start_time(&self) -> std::time::SystemTime;
    /// A property of the downstream TLS connection; `None` without TLS or a peer certificate.
    fn tls(&self, _field: TlsField) -> Option<String> {
        None
    }
}

/// The downstream connection's certificates as format strings name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsField {
    /// The peer's URI SANs, comma-separated (its SPIFFE identity in a mesh).
    PeerUriSan,
    PeerDnsSan,
    /// The peer's subject, RFC 2253.
    PeerSubject,
    /// Lowercase hex SHA-256 of the peer certificate.
    PeerFingerprint256,
    /// The URI SANs of the certificate this side presented.
    LocalUriSan,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Literal(String),
    RemoteAddress { with_port: bool, direct: bool },
    RemotePort,
    LocalAddress { with_port: bool },
    LocalPort,
    RequestHeader { names: Vec<String>, max_len: Option<usize> },
    ResponseHeader { names: Vec<String>, max_len: Option<usize> },
    Protocol,
    Hostname,
    UpstreamCluster,
    UpstreamRemote { with_port: bool },
    RouteName,
    ResponseCode,
    StartTime,
    Environment(String),
    Tls(TlsField),
}

/// A parsed format string.
#[derive(Debug, Clone, PartialEq)]
pub struct Formatter {
    parts: Vec<Part>,
}

impl Formatter {
    pub fn parse(text: &str) -> FieldResult<Self> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(start) = rest.find('%') {
            literal.push_str(&rest[..start]);
            let after = &rest[start + 1..];
            if let Some(stripped) = after.strip_prefix('%') {
                literal.push('%');
                rest = stripped;
                continue;
            }
            let Some(end) = find_operator_end(after) else {
                return Err(FieldError::new(
                    "",
                    format!("Incorrect configuration: {text}. Couldn't find valid command at position {start}"),
                ));
            };
            let op = &after[..end];
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(parse_operator(op)?);
            rest = &after[end + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Formatter { parts })
    }

    /// The text when it has no operators (the common case: no per-request work).
    pub fn as_literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Literal(s)] => Some(s),
            _ => None,
        }
    }

    pub fn render(&self, ctx: &dyn FormatContext) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Literal(s) => out.push_str(s),
                Part::RemoteAddress { with_port, direct } => {
                    let a = if *direct { ctx.downstream_direct_remote() } else { ctx.downstream_remote() };
                    push_addr(&mut out, a, *with_port)
                }
                Part::RemotePort => {
                    if let Some(a) = ctx.downstream_remote() {
                        out.push_str(&a.port().to_string())
                    }
                }
                Part::LocalAddress { with_port } => push_addr(&mut out, ctx.downstream_local(), *with_port),
                Part::LocalPort => {
                    if let Some(a) = ctx.downstream_local() {
                        out.push_str(&a.port().to_string())
                    }
                }
                Part::RequestHeader { names, max_len } => {
                    push_header(&mut out, names.iter().find_map(|n| ctx.request_header(n)), *max_len)
                }
                Part::ResponseHeader { names, max_len } => {
                    push_header(&mut out, names.iter().find_map(|n| ctx.response_header(n)), *max_len)
                }
                Part::Protocol => out.push_str(ctx.protocol()),
                Part::Hostname => out.push_str(&hostname()),
                Part::UpstreamCluster => out.push_str(&ctx.upstream_cluster().unwrap_or_default()),
                Part::UpstreamRemote { with_port } => push_addr(&mut out, ctx.upstream_remote(), *with_port),
                Part::RouteName => out.push_str(&ctx.route_name().unwrap_or_default()),
                Part::ResponseCode => out.push_str(&ctx.response_code().unwrap_or(0).to_string()),
                Part::StartTime => out.push_str(&httpdate::fmt_http_date(ctx.start_time())),
                Part::Environment(name) => out.push_str(&std::env::var(name).unwrap_or_default()),
                Part::Tls(field) => out.push_str(&ctx.tls(*field).unwrap_or_default()),
            }
        }
        out
    }
}

fn push_addr(out: &mut String, a: Option<std::net::SocketAddr>, with_port: bool) {
    if let Some(a) = a {
        if with_port {
            out.push_str(&a.to_string());
        } else {
            out.push_str(&a.ip().to_string());
        }
    }
}

fn push_header(out: &mut String, v: Option<String>, max_len: Option<usize>) {
    // Envoy prints "-" for a missing value in access logs but nothing in header values.
    if let Some(v) = v {
        let end = max_len.map_or(v.len(), |m| floor_char_boundary(&v, m));
        out.push_str(&v[..end]);
    }
}

fn floor_char_boundary(s: &str, max: usize) -> usize {
    let mut i = max.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// An operator ends at the next `%` that is not inside parentheses.
fn find_operator_end(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            '%' if depth == 0 => return Some(i),
            _ => {}
        }
    }
    None
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}

fn parse_operator(op: &str) -> FieldResult<Part> {
    let unsupported = || FieldError::new("", format!("Not supported field in StreamInfo: {op}"));
    if let Some((name, arg, max_len)) = split_call(op) {
        let names = || arg.split('?').map(|n| n.to_ascii_lowercase()).collect::<Vec<_>>();
        return Ok(match name {
            "REQ" => Part::RequestHeader { names: names(), max_len },
            "RESP" => Part::ResponseHeader { names: names(), max_len },
            "ENVIRONMENT" => Part::Environment(arg.to_string()),
            "START_TIME" => Part::StartTime,
            _ => return Err(unsupported()),
        });
    }
    Ok(match op {
        "DOWNSTREAM_REMOTE_ADDRESS" => Part::RemoteAddress { with_port: true, direct: false },
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Part::RemoteAddress { with_port: false, direct: false },
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => Part::RemoteAddress { with_port: true, direct: true },
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => Part::RemoteAddress { with_port: false, direct: true },
        "DOWNSTREAM_REMOTE_PORT" => Part::RemotePort,
        "DOWNSTREAM_LOCAL_ADDRESS" => Part::LocalAddress { with_port: true },
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Part::LocalAddress { with_port: false },
        "DOWNSTREAM_LOCAL_PORT" => Part::LocalPort,
        "PROTOCOL" => Part::Protocol,
        "HOSTNAME" => Part::Hostname,
        "UPSTREAM_CLUSTER" => Part::UpstreamCluster,
        "UPSTREAM_REMOTE_ADDRESS" | "UPSTREAM_HOST" => Part::UpstreamRemote { with_port: true },
        "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Part::UpstreamRemote { with_port: false },
        "ROUTE_NAME" => Part::RouteName,
        "RESPONSE_CODE" => Part::ResponseCode,
        "START_TIME" => Part::StartTime,
        "DOWNSTREAM_PEER_URI_SAN" => Part::Tls(TlsField::PeerUriSan),
        "DOWNSTREAM_PEER_DNS_SAN" => Part::Tls(TlsField::PeerDnsSan),
        "DOWNSTREAM_PEER_SUBJECT" => Part::Tls(TlsField::PeerSubject),
        "DOWNSTREAM_PEER_FINGERPRINT_256" => Part::Tls(TlsField::PeerFingerprint256),
        "DOWNSTREAM_LOCAL_URI_SAN" => Part::Tls(TlsField::LocalUriSan),
        _ => return Err(unsupported()),
    })
}

/// `NAME(arg):len` → (NAME, arg, len).
fn split_call(op: &str) -> Option<(&str, &str, Option<usize>)> {
    let open = op.find('(')?;
    let close = op.rfind(')')?;
    let max_len = op[close + 1..].strip_prefix(':').and_then(|l| l.parse().ok());
    Some((&op[..open], &op[open + 1..close], max_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Ctx;
    impl FormatContext for Ctx {
        fn downstream_remote(&self) -> Option<std::net::SocketAddr> {
            Some("10.0.0.1:555".parse().unwrap())
        }
        fn downstream_local(&self) -> Option<std::net::SocketAddr> {
            Some("127.0.0.1:80".parse().unwrap())
        }
        fn request_header(&self, name: &str) -> Option<String> {
            (name == "x-b").then(|| "bee".to_string())
        }
        fn protocol(&self) -> &'static str {
            "HTTP/1.1"
        }
        fn start_time(&self) -> std::time::SystemTime {
            std::time::SystemTime::UNIX_EPOCH
        }
    }

    #[test]
    fn renders_operators() {
        let f =
            Formatter::parse("ip=%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% h=%REQ(x-a?x-b):2% %% %PROTOCOL%").unwrap();
        assert_eq!(f.render(&Ctx), "ip=10.0.0.1 h=be % HTTP/1.1");
        assert_eq!(Formatter::parse("plain").unwrap().as_literal(), Some("plain"));
        assert!(Formatter::parse("%NOPE%").is_err());
    }
}
