//! AMQP URIs as RabbitMQ documents them: `amqp://user:pass@host:port/vhost`.
//!
//! Every part is optional and percent-encoded; the defaults are guest/guest on localhost:5672 and
//! the vhost `/` when the URI has no path. As in RabbitMQ's URI spec, a path of `/` alone names
//! the empty vhost, so the default vhost is written `/%2f`. Query parameters (`?heartbeat=...`)
//! are accepted and ignored: this client always asks for no heartbeats. TLS (`amqps`) is not
//! supported.

use std::fmt;

pub const DEFAULT_PORT: u16 = 5672;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpUri {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: String,
    pub vhost: String,
}

impl AmqpUri {
    /// `host:port` for `TcpStream::connect` (IPv6 literals bracketed).
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub fn parse(s: &str) -> Result<AmqpUri, String> {
        let rest = match s.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("amqp") => rest,
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("amqps") => {
                return Err(format!("{s}: amqps (TLS) is not supported by warren-perf"))
            }
            _ => return Err(format!("{s}: an AMQP URI starts with amqp://")),
        };
        let rest = rest.split_once('?').map_or(rest, |(before, _query)| before);
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], Some(&rest[at + 1..])),
            None => (rest, None),
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => ("guest".to_string(), "guest".to_string()),
            Some(info) => match info.split_once(':') {
                Some((u, p)) => (decode(u)?, decode(p)?),
                None => (decode(info)?, String::new()),
            },
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| format!("{s}: unclosed [ in the host"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(format!("{s}: unexpected {after:?} after the IPv6 address")),
            };
            (host.to_string(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (decode(h)?, Some(p)),
                None => (decode(hostport)?, None),
            }
        };
        let port = match port {
            None | Some("") => DEFAULT_PORT,
            Some(p) => p.parse::<u16>().map_err(|_| format!("{s}: port {p:?} is not a number from 0 to 65535"))?,
        };
        let host = if host.is_empty() { "localhost".to_string() } else { host };
        let vhost = match path {
            None => "/".to_string(),
            Some(p) => decode(p)?,
        };
        Ok(AmqpUri { host, port, username, password, vhost })
    }
}

impl fmt::Display for AmqpUri {
    /// The URI without the password, for messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "amqp://{}@{}/{}", self.username, self.address(), self.vhost.replace('/', "%2f"))
    }
}

/// Percent-decoding; the result must be UTF-8.
fn decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or_else(|| format!("{s:?}: % must be followed by two hex digits"))?;
            let hex = std::str::from_utf8(hex).map_err(|_| format!("{s:?}: bad percent escape"))?;
            let byte = u8::from_str_radix(hex, 16).map_err(|_| format!("{s:?}: %{hex} is not a hex escape"))?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?}: decodes to bytes that are not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> AmqpUri {
        AmqpUri::parse(s).expect("valid URI")
    }

    #[test]
    fn full_uri_with_default_vhost() {
        let u = parse("amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(u.host, "127.0.0.1");
        assert_eq!(u.port, 5672);
        assert_eq!((u.username.as_str(), u.password.as_str()), ("guest", "guest"));
        assert_eq!(u.vhost, "/");
        assert_eq!(u.address(), "127.0.0.1:5672");
    }

    #[test]
    fn defaults_fill_missing_parts() {
        let u = parse("amqp://");
        assert_eq!(
            u,
            AmqpUri {
                host: "localhost".into(),
                port: 5672,
                username: "guest".into(),
                password: "guest".into(),
                vhost: "/".into()
            }
        );
        assert_eq!(parse("amqp://h").vhost, "/");
        // RabbitMQ's URI spec: a bare slash is the empty vhost.
        assert_eq!(parse("amqp://h/").vhost, "");
        assert_eq!(parse("amqp://h:5673").port, 5673);
    }

    #[test]
    fn percent_escapes_in_every_part() {
        let u = parse("amqp://us%40er:p%3Ass@host/my%2Fvhost");
        assert_eq!(u.username, "us@er");
        assert_eq!(u.password, "p:ss");
        assert_eq!(u.vhost, "my/vhost");
        assert_eq!(parse("amqp://a:b%40c@h/v").password, "b@c");
    }

    #[test]
    fn ipv6_and_query() {
        let u = parse("AMQP://[::1]:5699/v?heartbeat=10");
        assert_eq!(u.host, "::1");
        assert_eq!(u.port, 5699);
        assert_eq!(u.vhost, "v");
        assert_eq!(u.address(), "[::1]:5699");
    }

    #[test]
    fn bad_uris_say_why() {
        assert!(AmqpUri::parse("amqps://h").expect_err("tls").contains("TLS"));
        assert!(AmqpUri::parse("http://h").expect_err("scheme").contains("amqp://"));
        assert!(AmqpUri::parse("amqp://h:99999").expect_err("port").contains("port"));
        assert!(AmqpUri::parse("amqp://h/%zz").expect_err("escape").contains("hex"));
        assert!(AmqpUri::parse("amqp://h/%4").is_err());
        assert!(AmqpUri::parse("amqp://h/%ff").expect_err("utf8").contains("UTF-8"));
    }
}
