//! Reads SNI and ALPN from a TLS ClientHello without consuming it (Envoy's tls_inspector).

/// What the inspector learned from the first bytes of a connection.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Inspected {
    pub tls: bool,
    pub sni: Option<String>,
    pub alpn: Vec<String>,
}

/// `None` when more bytes are needed to decide. `http` also runs Envoy's http_inspector on
/// plaintext: the HTTP/2 connection preface means `h2c`, an HTTP/1.x request line `http/1.1` (or
/// `http/1.0`), reported as the application protocol.
pub fn inspect(buf: &[u8], http: bool) -> Option<Inspected> {
    let first = *buf.first()?;
    if first != 0x16 {
        if !http {
            return Some(Inspected::default());
        }
        return http_protocol(buf)
            .map(|p| Inspected { alpn: p.map(|p| vec![p.to_string()]).unwrap_or_default(), ..Default::default() });
    }
    if buf.len() < 5 {
        return None;
    }
    let record_len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    let Some(record) = buf.get(5..5 + record_len) else {
        // The whole first record is needed; the caller peeks again with more data.
        return if buf.len() >= 16 * 1024 + 5 { Some(Inspected { tls: true, ..Default::default() }) } else { None };
    };
    Some(parse_handshake(record).unwrap_or(Inspected { tls: true, ..Default::default() }))
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// `None`: need more bytes; `Some(None)`: not HTTP; `Some(Some(protocol))`.
fn http_protocol(buf: &[u8]) -> Option<Option<&'static str>> {
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() { Some(Some("h2c")) } else { None };
    }
    // An HTTP/1.x request line: `METHOD SP target SP HTTP/1.x CRLF`, within a bounded prefix. A
    // method is upper-case letters, so anything else before the first space settles it early.
    let method_len = buf.iter().position(|b| *b == b' ').unwrap_or(buf.len());
    if !buf[..method_len].iter().all(|b| b.is_ascii_uppercase()) {
        return Some(None);
    }
    let Some(line_end) = buf.iter().position(|b| *b == b'\n') else {
        return if buf.len() < 8 * 1024 { None } else { Some(None) };
    };
    let line = buf[..line_end].strip_suffix(b"\r").unwrap_or(&buf[..line_end]);
    let mut parts = line.split(|b| *b == b' ');
    let (Some(method), Some(_target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Some(None);
    };
    if method.is_empty() || !method.iter().all(|b| b.is_ascii_uppercase()) {
        return Some(None);
    }
    Some(match version {
        b"HTTP/1.1" => Some("http/1.1"),
        b"HTTP/1.0" => Some("http/1.0"),
        _ => None,
    })
}

fn parse_handshake(h: &[u8]) -> Option<Inspected> {
    let mut r = Reader(h);
    if r.u8()? != 1 {
        return None;
    }
    let _len = r.take(3)?;
    r.take(2)?; // client version
    r.take(32)?; // random
    let sid = r.u8()?;
    r.take(usize::from(sid))?;
    let cs = r.u16()?;
    r.take(usize::from(cs))?;
    let comp = r.u8()?;
    r.take(usize::from(comp))?;
    let mut out = Inspected { tls: true, ..Default::default() };
    let ext_len = r.u16()?;
    let mut exts = Reader(r.take(usize::from(ext_len))?);
    while let (Some(kind), Some(len)) = (exts.u16(), exts.u16()) {
        let mut body = Reader(exts.take(usize::from(len))?);
        match kind {
            0 => {
                let _list = body.u16()?;
                while let Some(name_type) = body.u8() {
                    let n = body.u16()?;
                    let name = body.take(usize::from(n))?;
                    if name_type == 0 {
                        out.sni = std::str::from_utf8(name).ok().map(|s| s.to_ascii_lowercase());
                    }
                }
            }
            16 => {
                let _list = body.u16()?;
                while let Some(n) = body.u8() {
                    let p = body.take(usize::from(n))?;
                    out.alpn.push(String::from_utf8_lossy(p).into_owned());
                }
            }
            _ => {}
        }
    }
    Some(out)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_inspection() {
        assert_eq!(inspect(b"GET / HTTP/1.1\r\nHost: a\r\n", true).unwrap().alpn, vec!["http/1.1"]);
        assert_eq!(inspect(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", true).unwrap().alpn, vec!["h2c"]);
        assert_eq!(inspect(b"PRI * HT", true), None, "a partial preface waits for more bytes");
        assert!(inspect(b"\x00\x01binary", true).unwrap().alpn.is_empty());
        assert!(inspect(b"GET / HTTP/1.1\r\n", false).unwrap().alpn.is_empty(), "no inspector, no protocol");
    }
}
