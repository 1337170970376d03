//! TLS with rustls, for AMQPS and for the management listener's HTTPS: the server certificate
//! and key from PEM files, and optionally client certificates checked against a CA (RabbitMQ's
//! `ssl_options.verify = verify_peer`, required when `ssl_options.fail_if_no_peer_cert = true`;
//! `management.ssl.*` likewise). Also the user name the EXTERNAL mechanism reads in a client
//! certificate, written as RabbitMQ writes it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
pub use tokio_rustls::TlsAcceptor;
use warren_core::auth::{CertLoginFrom, SanSelector, SanType};
use x509_parser::der_parser::asn1_rs::{Any, Tag};
use x509_parser::x509::X509Name;

/// RabbitMQ's `ssl_options.*` (AMQPS) or `management.ssl.*` (HTTPS).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TlsSettings {
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    pub cacertfile: Option<PathBuf>,
    /// Ask clients for a certificate and check it against `cacertfile`.
    pub verify_peer: bool,
    /// With `verify_peer`: refuse clients that send no certificate.
    pub fail_if_no_peer_cert: bool,
}

fn certs(setting: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{setting} {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{setting} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{setting} {}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// Builds the acceptor, or says which setting is wrong and why (a missing file, no certificate
/// or key in it, a key that does not match the certificate, an unusable CA). `prefix` is where
/// the settings came from, `ssl_options` or `management.ssl`, so errors name the right key.
pub fn acceptor(s: &TlsSettings, prefix: &str) -> Result<TlsAcceptor, String> {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let certfile = s.certfile.as_deref().ok_or_else(|| format!("{prefix}.certfile is required for a TLS listener"))?;
    let keyfile = s.keyfile.as_deref().ok_or_else(|| format!("{prefix}.keyfile is required for a TLS listener"))?;
    let chain = certs(&format!("{prefix}.certfile"), certfile)?;
    let key = PrivateKeyDer::from_pem_file(keyfile)
        .map_err(|e| format!("{prefix}.keyfile {}: no usable private key: {e}", keyfile.display()))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = if s.verify_peer {
        let cafile = s
            .cacertfile
            .as_deref()
            .ok_or_else(|| format!("{prefix}.verify = verify_peer needs {prefix}.cacertfile"))?;
        let mut roots = RootCertStore::empty();
        for ca in certs(&format!("{prefix}.cacertfile"), cafile)? {
            roots.add(ca).map_err(|e| format!("{prefix}.cacertfile {}: {e}", cafile.display()))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let verifier = if s.fail_if_no_peer_cert { verifier } else { verifier.allow_unauthenticated() };
        builder.with_client_cert_verifier(verifier.build().map_err(|e| format!("{prefix}.cacertfile: {e}"))?)
    } else {
        builder.with_no_client_auth()
    };
    let config = builder.with_single_cert(chain, key).map_err(|e| {
        format!("{prefix}.certfile {} and {prefix}.keyfile {}: {e}", certfile.display(), keyfile.display())
    })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// TLS between nodes (`distribution.ssl_options.*`, `prefix`): every node presents its
/// certificate (`certfile`, `keyfile`) and requires the other's, both checked against
/// `cacertfile`; a dialing node also checks that the certificate names the host it dialed.
/// Returns how to accept and how to dial.
pub fn inter_node(s: &TlsSettings, prefix: &str) -> Result<(TlsAcceptor, tokio_rustls::TlsConnector), String> {
    let cafile =
        s.cacertfile.as_deref().ok_or_else(|| format!("{prefix}.cacertfile is required for TLS between nodes"))?;
    let strict = TlsSettings { verify_peer: true, fail_if_no_peer_cert: true, ..s.clone() };
    let acceptor = acceptor(&strict, prefix)?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in certs(&format!("{prefix}.cacertfile"), cafile)? {
        roots.add(ca).map_err(|e| format!("{prefix}.cacertfile {}: {e}", cafile.display()))?;
    }
    // `acceptor` checked that both files are there and usable.
    let (certfile, keyfile) =
        (s.certfile.as_deref().unwrap_or(Path::new("")), s.keyfile.as_deref().unwrap_or(Path::new("")));
    let chain = certs(&format!("{prefix}.certfile"), certfile)?;
    let key = PrivateKeyDer::from_pem_file(keyfile)
        .map_err(|e| format!("{prefix}.keyfile {}: no usable private key: {e}", keyfile.display()))?;
    let client = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("{prefix}.certfile and {prefix}.keyfile: {e}"))?;
    Ok((acceptor, tokio_rustls::TlsConnector::from(Arc::new(client))))
}

/// The user name EXTERNAL logs in as, from a client certificate (DER) the CA verified; None
/// when the certificate does not parse or holds no such name.
pub fn cert_login_name(der: &[u8], from: CertLoginFrom, san: SanSelector) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = match from {
        CertLoginFrom::SubjectAlternativeName => subject_alternative_name(&cert, san)?,
        CertLoginFrom::DistinguishedName => distinguished_name(subject),
        CertLoginFrom::CommonName => {
            // Several CNs are joined with ",", unescaped, as RabbitMQ does.
            let cns: Vec<String> = subject.iter_common_name().map(|a| attribute_value(a.attr_value())).collect();
            cns.join(",")
        }
    };
    (!name.is_empty()).then_some(name)
}

/// The `san.index`-th subject alternative name of the type `san.kind`; IP addresses written as
/// text (dotted for IPv4, RFC 5952 for IPv6).
fn subject_alternative_name(cert: &x509_parser::certificate::X509Certificate<'_>, san: SanSelector) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let names = cert.subject_alternative_name().ok()??;
    names
        .value
        .general_names
        .iter()
        .filter_map(|n| match (san.kind, n) {
            (SanType::Dns, GeneralName::DNSName(s))
            | (SanType::Email, GeneralName::RFC822Name(s))
            | (SanType::Uri, GeneralName::URI(s)) => Some(s.to_string()),
            (SanType::Ip, GeneralName::IPAddress(b)) => match b.len() {
                4 => Some(std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()),
                16 => <[u8; 16]>::try_from(*b).ok().map(|a| std::net::Ipv6Addr::from(a).to_string()),
                _ => None,
            },
            _ => None,
        })
        .nth(san.index)
}

/// A subject as RabbitMQ writes it (`rabbit_cert_info:subject`), RFC 4514 style: the RDNs last
/// to first, joined by ","; the attributes of a multi-valued RDN joined by "+"; known types by
/// their short name, others by their dotted OID; values escaped as [`escape_value`] does.
fn distinguished_name(name: &X509Name<'_>) -> String {
    let rdns: Vec<String> = name
        .iter()
        .map(|rdn| {
            let parts: Vec<String> = rdn
                .iter()
                .map(|atv| {
                    let oid = atv.attr_type().to_id_string();
                    let short = SHORT_NAMES.iter().find(|(o, _)| *o == oid).map(|(_, s)| *s);
                    let value = escape_value(&attribute_value(atv.attr_value()));
                    format!("{}={value}", short.unwrap_or(&oid))
                })
                .collect();
            parts.join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

/// Attribute types RabbitMQ writes by a short name (by OID).
const SHORT_NAMES: [(&str, &str); 17] = [
    ("2.5.4.3", "CN"),
    ("2.5.4.4", "SN"),
    ("2.5.4.5", "SERIALNUMBER"),
    ("2.5.4.6", "C"),
    ("2.5.4.7", "L"),
    ("2.5.4.8", "ST"),
    ("2.5.4.9", "STREET"),
    ("2.5.4.10", "O"),
    ("2.5.4.11", "OU"),
    ("2.5.4.12", "TITLE"),
    ("2.5.4.42", "GIVENNAME"),
    ("2.5.4.43", "INITIALS"),
    ("2.5.4.44", "GENERATIONQUALIFIER"),
    ("2.5.4.65", "PSEUDONYM"),
    ("0.9.2342.19200300.100.1.1", "UID"),
    ("0.9.2342.19200300.100.1.25", "DC"),
    ("1.2.840.113549.1.9.1", "EMAILADDRESS"),
];

/// An attribute's value as text: the string types decoded (BMPString as UTF-16, UniversalString
/// as UTF-32, TeletexString as Latin-1, as RabbitMQ reads them); anything else as RFC 4514's
/// "#" and the hex of its content.
fn attribute_value(value: &Any<'_>) -> String {
    let data = value.data;
    match value.tag() {
        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String | Tag::NumericString | Tag::VisibleString => {
            String::from_utf8_lossy(data).into_owned()
        }
        Tag::BmpString => {
            char::decode_utf16(data.chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
                .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
                .collect()
        }
        Tag::UniversalString => data
            .chunks(4)
            .map(|c| {
                let mut b = [0u8; 4];
                b[..c.len()].copy_from_slice(c);
                char::from_u32(u32::from_be_bytes(b)).unwrap_or(char::REPLACEMENT_CHARACTER)
            })
            .collect(),
        Tag::TeletexString => data.iter().map(|b| char::from(*b)).collect(),
        _ => {
            let mut hex = String::from("#");
            for b in data {
                let _ = write!(hex, "{b:02x}");
            }
            hex
        }
    }
}

/// Escapes an attribute value as RabbitMQ does (`escape_rdn_value`): a leading space or "#"
/// and a trailing space get a backslash, as do `" + , ; < > \`; bytes below 32 or from 126 up
/// (which covers every byte of a non-ASCII character in UTF-8) are written `\XX` in hex.
fn escape_value(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    for (i, &b) in bytes.iter().enumerate() {
        let first = i == 0;
        let last = i + 1 == bytes.len();
        match b {
            b' ' | b'#' if first => {
                out.push('\\');
                out.push(char::from(b));
            }
            b' ' if last => out.push_str("\\ "),
            b'"' | b'+' | b',' | b';' | b'<' | b'>' | b'\\' => {
                out.push('\\');
                out.push(char::from(b));
            }
            b if !(32..126).contains(&b) => {
                let _ = write!(out, "\\{b:02X}");
            }
            b => out.push(char::from(b)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, DnValue, KeyPair};

    #[test]
    fn tls_between_nodes_needs_a_ca_a_certificate_and_its_key() {
        let dir = std::env::temp_dir().join(format!("warren-inter-node-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let key = KeyPair::generate().expect("key");
        let cert =
            CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params").self_signed(&key).expect("cert");
        std::fs::write(dir.join("c.pem"), cert.pem()).expect("write");
        std::fs::write(dir.join("k.pem"), key.serialize_pem()).expect("write");
        let settings = |ca: bool, cert: bool, key: bool| TlsSettings {
            cacertfile: ca.then(|| dir.join("c.pem")),
            certfile: cert.then(|| dir.join("c.pem")),
            keyfile: key.then(|| dir.join("k.pem")),
            ..TlsSettings::default()
        };
        let p = "distribution.ssl_options";
        let why = |s: TlsSettings| inter_node(&s, p).err().expect("refused");
        assert!(why(settings(false, true, true)).contains("distribution.ssl_options.cacertfile is required"));
        assert!(why(settings(true, false, true)).contains("distribution.ssl_options.certfile is required"));
        assert!(why(settings(true, true, false)).contains("distribution.ssl_options.keyfile is required"));
        let wrong_key = TlsSettings { keyfile: Some(dir.join("c.pem")), ..settings(true, true, true) };
        assert!(why(wrong_key).contains("distribution.ssl_options.keyfile"));
        assert!(inter_node(&settings(true, true, true), p).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A self-signed certificate with the subject's attributes in this order (first is outermost).
    fn cert(subject: &[(DnType, DnValue)]) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (t, v) in subject {
            params.distinguished_name.push(t.clone(), v.clone());
        }
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    fn utf8(s: &str) -> DnValue {
        DnValue::Utf8String(s.to_string())
    }

    #[test]
    fn distinguished_name_is_written_last_rdn_first() {
        let der = cert(&[
            (DnType::CountryName, DnValue::PrintableString("GB".try_into().expect("printable"))),
            (DnType::OrganizationName, utf8("Acme")),
            (DnType::CommonName, utf8("alice")),
        ]);
        assert_eq!(
            cert_login_name(&der, CertLoginFrom::DistinguishedName, SanSelector::default()).as_deref(),
            Some("CN=alice,O=Acme,C=GB")
        );
        assert_eq!(cert_login_name(&der, CertLoginFrom::CommonName, SanSelector::default()).as_deref(), Some("alice"));
    }

    #[test]
    fn values_are_escaped_as_rabbitmq_escapes_them() {
        assert_eq!(escape_value("a,b+c"), "a\\,b\\+c");
        assert_eq!(escape_value("#x y "), "\\#x y\\ ");
        assert_eq!(escape_value(" "), "\\ ");
        assert_eq!(escape_value("a#b"), "a#b");
        assert_eq!(escape_value("x\"<>;\\"), "x\\\"\\<\\>\\;\\\\");
        assert_eq!(escape_value("é~"), "\\C3\\A9\\7E");
        assert_eq!(escape_value("\t"), "\\09");
        let der = cert(&[(DnType::OrganizationName, utf8("Acme, Inc.")), (DnType::CommonName, utf8("bob"))]);
        assert_eq!(
            cert_login_name(&der, CertLoginFrom::DistinguishedName, SanSelector::default()).as_deref(),
            Some("CN=bob,O=Acme\\, Inc.")
        );
        // The common name is taken as it is.
        let der = cert(&[(DnType::CommonName, utf8("Zoë, Q"))]);
        assert_eq!(cert_login_name(&der, CertLoginFrom::CommonName, SanSelector::default()).as_deref(), Some("Zoë, Q"));
    }

    #[test]
    fn unknown_types_are_written_by_oid_and_a_missing_cn_gives_no_name() {
        let der = cert(&[
            (DnType::CustomDnType(vec![2, 5, 4, 17]), utf8("12345")),
            (DnType::OrganizationalUnitName, utf8("ops")),
        ]);
        assert_eq!(
            cert_login_name(&der, CertLoginFrom::DistinguishedName, SanSelector::default()).as_deref(),
            Some("OU=ops,2.5.4.17=12345")
        );
        assert_eq!(cert_login_name(&der, CertLoginFrom::CommonName, SanSelector::default()), None);
        assert_eq!(
            cert_login_name(b"not a certificate", CertLoginFrom::DistinguishedName, SanSelector::default()),
            None
        );
    }

    #[test]
    fn the_login_can_be_a_subject_alternative_name_of_a_type_by_index() {
        use rcgen::SanType as San;
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names = vec![
            San::DnsName("a.example".try_into().expect("dns")),
            San::Rfc822Name("ops@example.com".try_into().expect("email")),
            San::DnsName("b.example".try_into().expect("dns")),
            San::IpAddress("10.1.2.3".parse().expect("ip")),
            San::IpAddress("2001:db8::1".parse().expect("ip")),
            San::URI("spiffe://example/svc".try_into().expect("uri")),
        ];
        let key = KeyPair::generate().expect("key");
        let der = params.self_signed(&key).expect("cert").der().to_vec();
        let san =
            |kind, index| cert_login_name(&der, CertLoginFrom::SubjectAlternativeName, SanSelector { kind, index });
        assert_eq!(san(SanType::Dns, 0).as_deref(), Some("a.example"));
        assert_eq!(san(SanType::Dns, 1).as_deref(), Some("b.example"));
        assert_eq!(san(SanType::Dns, 2), None);
        assert_eq!(san(SanType::Email, 0).as_deref(), Some("ops@example.com"));
        assert_eq!(san(SanType::Ip, 0).as_deref(), Some("10.1.2.3"));
        assert_eq!(san(SanType::Ip, 1).as_deref(), Some("2001:db8::1"));
        assert_eq!(san(SanType::Uri, 0).as_deref(), Some("spiffe://example/svc"));
        // A certificate without SANs gives no name.
        let plain = cert(&[(DnType::CommonName, DnValue::Utf8String("alice".into()))]);
        let none = cert_login_name(&plain, CertLoginFrom::SubjectAlternativeName, SanSelector::default());
        assert_eq!(none, None);
    }
}
