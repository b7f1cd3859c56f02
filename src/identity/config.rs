//! Identity settings under pilot-agent's names, so an injected pod's environment just works:
//! `CA_ADDR`, `TRUST_DOMAIN`, `POD_NAMESPACE`, `SERVICE_ACCOUNT`, `ISTIO_META_CLUSTER_ID`,
//! `SECRET_TTL` (a Go duration), `ECC_SIGNATURE_ALGORITHM`, and the token and CA root at
//! `./var/run/secrets/tokens/istio-token` and `./var/run/secrets/istio/root-cert.pem` (relative
//! to the working directory, as pilot-agent reads them). Flags override each.

use std::path::PathBuf;
use std::time::Duration;

use super::{Identity, IdentityError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    EcdsaP256,
    Rsa2048,
}

#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// `host:port` (TLS, server name = host, as istiod's) or `http://host:port` (plaintext, for a
    /// local control plane on loopback).
    pub ca_addr: String,
    pub identity: Identity,
    pub cluster_id: String,
    pub ttl: Duration,
    pub key: KeyAlgorithm,
    pub token_path: PathBuf,
    pub root_cert_path: PathBuf,
}

/// Flag values; `None` falls back to the environment, then to pilot-agent's default.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub ca_addr: Option<String>,
    pub trust_domain: Option<String>,
    pub namespace: Option<String>,
    pub service_account: Option<String>,
    pub cluster_id: Option<String>,
    pub secret_ttl: Option<String>,
    pub key_algorithm: Option<String>,
    pub token_path: Option<PathBuf>,
    pub root_cert_path: Option<PathBuf>,
}

impl IdentityConfig {
    /// The provider's settings, or `None` when no CA address is given (flag or `CA_ADDR`).
    pub fn from_env(o: &Overrides) -> Result<Option<IdentityConfig>, IdentityError> {
        Self::from_lookup(o, |k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    pub fn from_lookup(
        o: &Overrides,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<IdentityConfig>, IdentityError> {
        let Some(ca_addr) = o.ca_addr.clone().or_else(|| env("CA_ADDR")) else { return Ok(None) };
        let pick = |flag: &Option<String>, name: &str, default: &str| {
            flag.clone().or_else(|| env(name)).unwrap_or_else(|| default.to_string())
        };
        let identity = Identity {
            trust_domain: pick(&o.trust_domain, "TRUST_DOMAIN", "cluster.local"),
            namespace: pick(&o.namespace, "POD_NAMESPACE", "default"),
            service_account: pick(&o.service_account, "SERVICE_ACCOUNT", "default"),
        };
        let ttl_text = pick(&o.secret_ttl, "SECRET_TTL", "24h");
        let ttl = parse_go_duration(&ttl_text).filter(|d| !d.is_zero()).ok_or_else(|| IdentityError::Config {
            name: "SECRET_TTL",
            reason: format!("'{ttl_text}' is not a positive Go duration such as 24h or 30s"),
        })?;
        // pilot-agent: ECDSA only when asked; the issue asks ECDSA P-256 by default, RSA on request.
        let key = match o.key_algorithm.clone().or_else(|| env("ECC_SIGNATURE_ALGORITHM")).as_deref() {
            None | Some("ECDSA") | Some("ecdsa") => KeyAlgorithm::EcdsaP256,
            Some("RSA") | Some("rsa") => KeyAlgorithm::Rsa2048,
            Some(other) => {
                return Err(IdentityError::Config {
                    name: "ECC_SIGNATURE_ALGORITHM",
                    reason: format!("unknown value '{other}' (ECDSA or RSA)"),
                })
            }
        };
        Ok(Some(IdentityConfig {
            ca_addr,
            identity,
            cluster_id: pick(&o.cluster_id, "ISTIO_META_CLUSTER_ID", "Kubernetes"),
            ttl,
            key,
            token_path: o.token_path.clone().unwrap_or_else(|| "./var/run/secrets/tokens/istio-token".into()),
            root_cert_path: o.root_cert_path.clone().unwrap_or_else(|| "./var/run/secrets/istio/root-cert.pem".into()),
        }))
    }
}

/// Go's `time.ParseDuration`: a sequence of decimal numbers with units `ns`, `us`/`µs`, `ms`,
/// `s`, `m`, `h` (`24h`, `1h30m`, `1.5s`). Negative durations are refused.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += value * seconds;
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("24h"), Some(Duration::from_secs(86400)));
        assert_eq!(parse_go_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_go_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        for bad in ["", "10", "-1s", "1d", "h", "1.2.3s"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn pilot_agent_environment() {
        let env = |k: &str| match k {
            "CA_ADDR" => Some("istiod.istio-system.svc:15012".to_string()),
            "POD_NAMESPACE" => Some("shop".to_string()),
            "SERVICE_ACCOUNT" => Some("cart".to_string()),
            "SECRET_TTL" => Some("12h".to_string()),
            _ => None,
        };
        let c = IdentityConfig::from_lookup(&Overrides::default(), env).unwrap().unwrap();
        assert_eq!(c.identity.to_string(), "spiffe://cluster.local/ns/shop/sa/cart");
        assert_eq!(c.ttl, Duration::from_secs(12 * 3600));
        assert_eq!(c.cluster_id, "Kubernetes");
        assert_eq!(c.key, KeyAlgorithm::EcdsaP256);
        assert!(IdentityConfig::from_lookup(&Overrides::default(), |_| None).unwrap().is_none());
        let bad_ttl = |k: &str| if k == "SECRET_TTL" { Some("forever".into()) } else { env(k) };
        assert!(IdentityConfig::from_lookup(&Overrides::default(), bad_ttl).is_err());
    }
}
