//! Access control: users (RabbitMQ's salted password hashes, tags), permissions per user and
//! vhost (configure / write / read regular expressions), topic permissions, and the SASL
//! mechanisms PLAIN, AMQPLAIN and EXTERNAL (the user named by the client's TLS certificate,
//! which the server reads; no password).
//!
//! Password hashes follow RabbitMQ's `rabbit_password_hashing_sha256` (the default) and
//! `rabbit_password_hashing_sha512`: base64(salt ++ H(salt ++ password)) with a 4-byte random
//! salt, so hashes exported from RabbitMQ import as they are and the other way round.
//!
//! Permission patterns are compiled once, when set. As in RabbitMQ an empty pattern stands for
//! `^$`, which matches no resource (the default exchange is checked as `amq.default`).

use base64::Engine;
use regex::Regex;
use sha2::{Digest, Sha256, Sha512};
use std::collections::BTreeMap;
use std::sync::Arc;
use warren_amqp::codec::Reader;
use warren_amqp::{FieldTable, ProtocolError, ReplyCode};

/// A SASL mechanism Warren knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Amqplain,
    /// The user name comes from the client's verified TLS certificate
    /// (RabbitMQ's `rabbitmq_auth_mechanism_ssl`).
    External,
}

impl Mechanism {
    /// By its SASL name, as in connection.start-ok and `auth_mechanisms.N`.
    pub fn parse(name: &str) -> Option<Mechanism> {
        match name {
            "PLAIN" => Some(Mechanism::Plain),
            "AMQPLAIN" => Some(Mechanism::Amqplain),
            "EXTERNAL" => Some(Mechanism::External),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Amqplain => "AMQPLAIN",
            Mechanism::External => "EXTERNAL",
        }
    }
}

/// The mechanisms offered by default, in this order (RabbitMQ's `auth_mechanisms` default).
pub const DEFAULT_MECHANISMS: [Mechanism; 2] = [Mechanism::Plain, Mechanism::Amqplain];

/// What a connection is offered, in the configured order: EXTERNAL only to a TLS connection
/// whose client presented a certificate the CA verified, as RabbitMQ's `should_offer`.
pub fn offered(configured: &[Mechanism], verified_client_cert: bool) -> Vec<Mechanism> {
    configured.iter().copied().filter(|m| *m != Mechanism::External || verified_client_cert).collect()
}

/// The mechanisms as connection.start lists them: SASL names separated by spaces.
pub fn mechanisms_field(mechanisms: &[Mechanism]) -> String {
    mechanisms.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(" ")
}

/// Where EXTERNAL takes the user name from in the client certificate (RabbitMQ's
/// `ssl_cert_login_from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CertLoginFrom {
    /// The whole subject, RFC 4514 style as RabbitMQ writes it, e.g. "CN=alice,O=Acme,C=GB"
    /// (RabbitMQ's default).
    #[default]
    DistinguishedName,
    /// The subject's common name(s), joined by "," if there are several.
    CommonName,
    /// A subject alternative name, chosen by [`SanSelector`].
    SubjectAlternativeName,
}

/// Which subject alternative name EXTERNAL reads (RabbitMQ's `ssl_cert_login_san_type` and
/// `ssl_cert_login_san_index`): the `index`-th (from 0) of those of the type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SanSelector {
    pub kind: SanType,
    pub index: usize,
}

/// The kinds of subject alternative names a login can come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SanType {
    #[default]
    Dns,
    Ip,
    Email,
    Uri,
}

/// A refused login: what the client is told (as in RabbitMQ, no more than it needs), and why,
/// for the log.
#[derive(Debug)]
pub struct Refused {
    pub error: ProtocolError,
    pub why: String,
}

impl From<ProtocolError> for Refused {
    /// Told to the client and logged alike.
    fn from(error: ProtocolError) -> Refused {
        Refused { why: error.text.clone(), error }
    }
}

impl Refused {
    /// The client learns only that the login was refused, as from RabbitMQ.
    fn login(mechanism: &str, why: String) -> Refused {
        let text = format!(
            "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
        );
        Refused { error: refused(&text), why }
    }
}

/// RabbitMQ's default (and Warren's only generated) password hashing algorithm.
pub const SHA256: &str = "rabbit_password_hashing_sha256";
/// Also accepted when importing hashes.
pub const SHA512: &str = "rabbit_password_hashing_sha512";

/// The tags RabbitMQ knows (others are kept and shown, and mean nothing).
pub const KNOWN_TAGS: [&str; 5] = ["administrator", "monitoring", "management", "policymaker", "impersonator"];

/// A user as stored: name, salted password hash, tags.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub name: String,
    /// base64(salt ++ hash); empty when the user has no password (cannot log in with one).
    pub password_hash: String,
    /// One of [`SHA256`], [`SHA512`].
    pub hashing_algorithm: String,
    pub tags: Vec<String>,
}

impl User {
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }

    pub fn is_administrator(&self) -> bool {
        self.has_tag("administrator")
    }

    /// True when `password` is this user's password.
    pub fn check_password(&self, password: &str) -> bool {
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(&self.password_hash) else { return false };
        if raw.len() < 5 {
            return false;
        }
        let (salt, digest) = raw.split_at(4);
        let Some(expected) = hash_with(&self.hashing_algorithm, salt, password) else { return false };
        // Compare without an early exit so the time taken does not tell where they differ.
        expected.len() == digest.len() && expected.iter().zip(digest).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

fn hash_with(algorithm: &str, salt: &[u8], password: &str) -> Option<Vec<u8>> {
    match algorithm {
        SHA256 => {
            let mut h = Sha256::new();
            h.update(salt);
            h.update(password.as_bytes());
            Some(h.finalize().to_vec())
        }
        SHA512 => {
            let mut h = Sha512::new();
            h.update(salt);
            h.update(password.as_bytes());
            Some(h.finalize().to_vec())
        }
        _ => None,
    }
}

/// RabbitMQ's `rabbit_password_hashing_sha256` hash of `password` with the given salt:
/// base64(salt ++ SHA-256(salt ++ password)).
pub fn hash_password_with_salt(salt: [u8; 4], password: &str) -> String {
    let mut raw = salt.to_vec();
    let mut h = Sha256::new();
    h.update(salt);
    h.update(password.as_bytes());
    raw.extend_from_slice(&h.finalize());
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// [`hash_password_with_salt`] with a random salt.
pub fn hash_password(rng: &mut fastrand::Rng, password: &str) -> String {
    let salt = rng.u32(..).to_be_bytes();
    hash_password_with_salt(salt, password)
}

/// How a user's password is given to [`crate::Broker::put_user`].
#[derive(Debug, Clone)]
pub enum Password {
    /// A clear-text password, hashed with [`SHA256`].
    Clear(String),
    /// A hash as RabbitMQ exports it, with its algorithm.
    Hash { password_hash: String, hashing_algorithm: String },
    /// No password: the user cannot log in with one.
    None,
}

/// A compiled regular expression with the pattern it came from.
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    /// None for `.*` (matches everything, no regex run on the hot path).
    regex: Option<Regex>,
}

impl Pattern {
    /// Compiles a RabbitMQ permission pattern; the empty pattern means `^$`.
    pub fn new(source: &str) -> Result<Self, String> {
        let regex = match source {
            ".*" => None,
            "" => Some(compile("^$")?),
            s => Some(compile(s)?),
        };
        Ok(Pattern { source: source.into(), regex })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn is_match(&self, name: &str) -> bool {
        self.regex.as_ref().is_none_or(|r| r.is_match(name))
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

fn compile(s: &str) -> Result<Regex, String> {
    Regex::new(s).map_err(|e| format!("invalid regular expression '{s}': {e}"))
}

/// What an operation needs on a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Configure,
    Write,
    Read,
}

/// A user's permissions in one vhost.
#[derive(Debug, Clone, PartialEq)]
pub struct Permission {
    pub user: String,
    pub vhost: String,
    pub configure: Pattern,
    pub write: Pattern,
    pub read: Pattern,
}

impl Permission {
    pub fn new(user: &str, vhost: &str, configure: &str, write: &str, read: &str) -> Result<Self, String> {
        Ok(Permission {
            user: user.into(),
            vhost: vhost.into(),
            configure: Pattern::new(configure)?,
            write: Pattern::new(write)?,
            read: Pattern::new(read)?,
        })
    }

    /// True when the permission allows `access` to the resource named `name` (the default
    /// exchange's empty name is checked as `amq.default`, as RabbitMQ does).
    pub fn allows(&self, access: Access, name: &str) -> bool {
        let pattern = match access {
            Access::Configure => &self.configure,
            Access::Write => &self.write,
            Access::Read => &self.read,
        };
        pattern.is_match(name)
    }
}

/// A topic permission: for a topic exchange, which routing keys a user may publish with
/// (`write`) and bind with (`read`). Patterns may hold `{username}` and `{vhost}`, expanded
/// when set.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicPermission {
    pub user: String,
    pub vhost: String,
    pub exchange: String,
    pub write: Pattern,
    pub read: Pattern,
}

impl TopicPermission {
    pub fn new(user: &str, vhost: &str, exchange: &str, write: &str, read: &str) -> Result<Self, String> {
        let expand = |p: &str| p.replace("{username}", user).replace("{vhost}", vhost);
        let mut write_p = Pattern::new(&expand(write))?;
        let mut read_p = Pattern::new(&expand(read))?;
        // Shown and stored as given, unexpanded.
        write_p.source = write.into();
        read_p.source = read.into();
        Ok(TopicPermission {
            user: user.into(),
            vhost: vhost.into(),
            exchange: exchange.into(),
            write: write_p,
            read: read_p,
        })
    }
}

/// What a connection may do in its vhost: resolved at connection.open and replaced when the
/// permissions change.
#[derive(Debug, Clone)]
pub struct Grants {
    pub permission: Permission,
    pub topic: Vec<TopicPermission>,
    /// The user has the `impersonator` tag: it may publish with any `user_id` property.
    pub impersonator: bool,
}

impl Grants {
    /// The topic permission on `exchange` allows `access` (Write or Read) with `routing_key`;
    /// true when there is no topic permission for that exchange.
    pub fn topic_allows(&self, exchange: &str, access: Access, routing_key: &str) -> bool {
        self.topic.iter().filter(|t| t.exchange == exchange).all(|t| match access {
            Access::Write => t.write.is_match(routing_key),
            _ => t.read.is_match(routing_key),
        })
    }
}

/// The user store and the permissions.
#[derive(Debug, Default)]
pub struct Users {
    users: BTreeMap<String, User>,
    /// Users that may connect from the loopback interface only (RabbitMQ: loopback_users).
    loopback_only: Vec<String>,
    permissions: BTreeMap<(String, String), Permission>,
    /// By (user, vhost, exchange).
    topic_permissions: BTreeMap<(String, String, String), TopicPermission>,
}

fn refused(detail: &str) -> ProtocolError {
    ProtocolError::new(ReplyCode::AccessRefused, detail)
}

impl Users {
    /// Adds or replaces a user with a clear-text password and no tags (for tests: the salt comes
    /// from the name).
    pub fn add(&mut self, name: &str, password: &str, loopback_only: bool) {
        let mut rng = fastrand::Rng::with_seed(name.bytes().fold(0u64, |h, b| h.rotate_left(8) ^ u64::from(b)));
        self.put(User {
            name: name.into(),
            password_hash: hash_password(&mut rng, password),
            hashing_algorithm: SHA256.into(),
            tags: Vec::new(),
        });
        self.set_loopback_only(name, loopback_only);
    }

    pub fn set_loopback_only(&mut self, name: &str, loopback_only: bool) {
        self.loopback_only.retain(|u| u != name);
        if loopback_only {
            self.loopback_only.push(name.into());
        }
    }

    /// Adds or replaces a user.
    pub fn put(&mut self, user: User) {
        self.users.insert(user.name.clone(), user);
    }

    /// Removes a user with its permissions; false when there was none.
    pub fn remove(&mut self, name: &str) -> bool {
        self.permissions.retain(|(u, _), _| u != name);
        self.topic_permissions.retain(|(u, _, _), _| u != name);
        self.users.remove(name).is_some()
    }

    pub fn get(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// Every user, by name.
    pub fn list(&self) -> impl Iterator<Item = &User> {
        self.users.values()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub fn set_permission(&mut self, p: Permission) {
        self.permissions.insert((p.user.clone(), p.vhost.clone()), p);
    }

    pub fn clear_permission(&mut self, user: &str, vhost: &str) -> bool {
        self.permissions.remove(&(user.to_string(), vhost.to_string())).is_some()
    }

    pub fn permission(&self, user: &str, vhost: &str) -> Option<&Permission> {
        self.permissions.get(&(user.to_string(), vhost.to_string()))
    }

    /// Every permission, by user then vhost.
    pub fn permissions(&self) -> impl Iterator<Item = &Permission> {
        self.permissions.values()
    }

    pub fn set_topic_permission(&mut self, p: TopicPermission) {
        self.topic_permissions.insert((p.user.clone(), p.vhost.clone(), p.exchange.clone()), p);
    }

    /// Clears the topic permission of one exchange, or all of (user, vhost) when `exchange` is
    /// None; false when there was none.
    pub fn clear_topic_permission(&mut self, user: &str, vhost: &str, exchange: Option<&str>) -> bool {
        let before = self.topic_permissions.len();
        self.topic_permissions.retain(|(u, v, x), _| !(u == user && v == vhost && exchange.is_none_or(|e| e == x)));
        self.topic_permissions.len() != before
    }

    /// Every topic permission, by user, vhost, exchange.
    pub fn topic_permissions(&self) -> impl Iterator<Item = &TopicPermission> {
        self.topic_permissions.values()
    }

    /// Drops the permissions of a deleted vhost.
    pub fn forget_vhost(&mut self, vhost: &str) {
        self.permissions.retain(|(_, v), _| v != vhost);
        self.topic_permissions.retain(|(_, v, _), _| v != vhost);
    }

    /// What `user` may do in `vhost`; None when it has no permissions there.
    pub fn grants(&self, user: &str, vhost: &str) -> Option<Arc<Grants>> {
        let permission = self.permission(user, vhost)?.clone();
        let topic = self.topic_permissions().filter(|t| t.user == user && t.vhost == vhost).cloned().collect();
        let impersonator = self.users.get(user).is_some_and(|u| u.has_tag("impersonator"));
        Some(Arc::new(Grants { permission, topic, impersonator }))
    }

    /// Checks a user name and password (HTTP basic auth and SASL); returns the user.
    pub fn check(&self, name: &str, password: &str, peer_is_loopback: bool) -> Result<&User, ProtocolError> {
        match self.users.get(name) {
            Some(u) if u.check_password(password) => self.check_loopback(name, peer_is_loopback).map(|()| u),
            _ => Err(refused("invalid credentials")),
        }
    }

    /// Refuses a loopback-only user connecting from elsewhere.
    fn check_loopback(&self, name: &str, peer_is_loopback: bool) -> Result<(), ProtocolError> {
        if !peer_is_loopback && self.loopback_only.iter().any(|l| l == name) {
            Err(refused(&format!("user '{name}' can only connect via localhost")))
        } else {
            Ok(())
        }
    }

    /// Checks a connection.start-ok response against the mechanisms the connection was
    /// offered; returns the user name. `cert_login` is the name the client's verified TLS
    /// certificate gives (see [`CertLoginFrom`]); only EXTERNAL reads it, and then the user
    /// must exist but no password is checked.
    pub fn authenticate(
        &self,
        mechanism: &str,
        response: &[u8],
        offered: &[Mechanism],
        cert_login: Option<&str>,
        peer_is_loopback: bool,
    ) -> Result<String, Refused> {
        let chosen = Mechanism::parse(mechanism).filter(|m| offered.contains(m));
        let (name, password) = match chosen {
            Some(Mechanism::Plain) => parse_plain(response)?,
            Some(Mechanism::Amqplain) => parse_amqplain(response)?,
            Some(Mechanism::External) => {
                let Some(name) = cert_login else {
                    return Err(Refused::login(mechanism, "no user name in the client certificate".into()));
                };
                if !self.users.contains_key(name) {
                    return Err(Refused::login(
                        mechanism,
                        format!("user '{name}' (from the client certificate) does not exist"),
                    ));
                }
                self.check_loopback(name, peer_is_loopback)?;
                return Ok(name.to_string());
            }
            None => {
                return Err(refused(&format!(
                    "unsupported authentication mechanism '{mechanism}', offered: {}",
                    mechanisms_field(offered)
                ))
                .into())
            }
        };
        match self.check(&name, &password, peer_is_loopback) {
            Ok(u) => Ok(u.name.clone()),
            Err(e) if e.text.contains("localhost") => Err(e.into()),
            Err(_) => Err(Refused::login(mechanism, format!("user '{name}': invalid credentials"))),
        }
    }
}

/// PLAIN: authzid NUL authcid NUL password.
fn parse_plain(response: &[u8]) -> Result<(String, String), ProtocolError> {
    let mut parts = response.split(|b| *b == 0);
    let (Some(_authz), Some(user), Some(pass), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(refused("PLAIN response is not 'authzid NUL user NUL password'"));
    };
    Ok((String::from_utf8_lossy(user).into_owned(), String::from_utf8_lossy(pass).into_owned()))
}

/// AMQPLAIN: a field table without its length prefix, holding LOGIN and PASSWORD.
fn parse_amqplain(response: &[u8]) -> Result<(String, String), ProtocolError> {
    let mut framed = Vec::with_capacity(response.len() + 4);
    framed.extend_from_slice(&(response.len() as u32).to_be_bytes());
    framed.extend_from_slice(response);
    let table = FieldTable::decode(&mut Reader::new(framed.into()))
        .map_err(|_| refused("AMQPLAIN response is not a field table"))?;
    let get = |k: &str| table.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    match (get("LOGIN"), get("PASSWORD")) {
        (Some(u), Some(p)) => Ok((u, p)),
        _ => Err(refused("AMQPLAIN response lacks LOGIN or PASSWORD")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Users {
        let mut u = Users::default();
        u.add("guest", "guest", true);
        u.add("app", "secret", false);
        u
    }

    const ALL: [Mechanism; 3] = [Mechanism::Plain, Mechanism::Amqplain, Mechanism::External];

    /// A login with the default mechanisms and no certificate.
    fn login(u: &Users, mechanism: &str, response: &[u8], loopback: bool) -> Result<String, Refused> {
        u.authenticate(mechanism, response, &DEFAULT_MECHANISMS, None, loopback)
    }

    #[test]
    fn plain_accepts_right_password_only() {
        let u = users();
        assert_eq!(login(&u, "PLAIN", b"\0guest\0guest", true).expect("ok"), "guest");
        let bad = login(&u, "PLAIN", b"\0guest\0wrong", true).expect_err("bad");
        assert_eq!(bad.error.code, ReplyCode::AccessRefused);
        assert!(bad.error.text.contains("Login was refused using authentication mechanism PLAIN"));
        assert!(bad.why.contains("'guest'"), "{}", bad.why);
        assert!(login(&u, "PLAIN", b"garbage", true).is_err());
    }

    #[test]
    fn guest_is_loopback_only() {
        let u = users();
        assert!(login(&u, "PLAIN", b"\0guest\0guest", false).is_err());
        assert!(login(&u, "PLAIN", b"\0app\0secret", false).is_ok());
    }

    #[test]
    fn external_takes_the_certificate_name_and_no_password() {
        let mut u = users();
        u.put(User {
            name: "CN=alice,O=Acme".into(),
            password_hash: String::new(),
            hashing_algorithm: SHA256.into(),
            tags: vec![],
        });
        let ok = u.authenticate("EXTERNAL", b"", &ALL, Some("CN=alice,O=Acme"), false).expect("known user");
        assert_eq!(ok, "CN=alice,O=Acme");
        // The response is not read: whatever the client sends, the certificate decides.
        assert!(u.authenticate("EXTERNAL", b"\0app\0secret", &ALL, Some("CN=bob"), true).is_err());
        let unknown = u.authenticate("EXTERNAL", b"", &ALL, Some("CN=bob"), true).expect_err("no such user");
        assert_eq!(unknown.error.code, ReplyCode::AccessRefused);
        assert!(unknown.error.text.contains("Login was refused using authentication mechanism EXTERNAL"));
        assert!(unknown.why.contains("CN=bob"), "{}", unknown.why);
        let nameless = u.authenticate("EXTERNAL", b"", &ALL, None, true).expect_err("no name");
        assert_eq!(nameless.error.code, ReplyCode::AccessRefused);
        // loopback_users apply as with a password.
        assert!(u.authenticate("EXTERNAL", b"", &ALL, Some("guest"), false).is_err());
        assert!(u.authenticate("EXTERNAL", b"", &ALL, Some("guest"), true).is_ok());
    }

    #[test]
    fn a_mechanism_not_offered_is_refused() {
        let u = users();
        // EXTERNAL needs a verified client certificate to be offered.
        let plain_tcp = offered(&ALL, false);
        assert_eq!(mechanisms_field(&plain_tcp), "PLAIN AMQPLAIN");
        assert_eq!(mechanisms_field(&offered(&ALL, true)), "PLAIN AMQPLAIN EXTERNAL");
        let e = u.authenticate("EXTERNAL", b"", &plain_tcp, Some("guest"), true).expect_err("not offered");
        assert!(e.error.text.contains("offered: PLAIN AMQPLAIN"), "{}", e.error.text);
        // Only what is configured is offered, in the configured order.
        let only_external = offered(&[Mechanism::External, Mechanism::Plain], true);
        assert_eq!(mechanisms_field(&only_external), "EXTERNAL PLAIN");
        assert!(u.authenticate("AMQPLAIN", b"", &only_external, None, true).is_err());
        assert!(u.authenticate("RABBIT-CR-DEMO", b"", &ALL, None, true).is_err());
    }

    #[test]
    fn amqplain_reads_the_table() {
        let mut t = FieldTable::new();
        t.insert("LOGIN", "app".into());
        t.insert("PASSWORD", "secret".into());
        let mut out = bytes::BytesMut::new();
        t.encode(&mut out);
        assert_eq!(login(&users(), "AMQPLAIN", &out[4..], true).expect("ok"), "app");
    }

    #[test]
    fn rabbitmq_exported_hashes_check() {
        // Exported from RabbitMQ 3.10.8 (`rabbitmqctl export_definitions`), password "pw".
        let u = User {
            name: "bob".into(),
            password_hash: "UTIkULXG9baDsj/YUf/sdMnz1QDOltSY5foDoCyZhBbY7RiT".into(),
            hashing_algorithm: SHA256.into(),
            tags: vec![],
        };
        assert!(u.check_password("pw"));
        assert!(!u.check_password("pw2"));
        assert!(!u.check_password(""));
        let salt = [0x51, 0x32, 0x24, 0x50];
        assert_eq!(hash_password_with_salt(salt, "pw"), u.password_hash);
    }

    #[test]
    fn patterns_follow_rabbitmq() {
        let p = Permission::new("u", "/", "", ".*", "^a").expect("compiles");
        assert!(!p.allows(Access::Configure, "q"));
        assert!(!p.allows(Access::Configure, "amq.default"));
        assert!(p.allows(Access::Write, "anything"));
        assert!(p.allows(Access::Read, "abc"));
        assert!(!p.allows(Access::Read, "bac"));
        assert!(Permission::new("u", "/", "(", "", "").is_err());
        let t = TopicPermission::new("alice", "v", "amq.topic", "^{username}\\.", "^{vhost}").expect("compiles");
        assert!(t.write.is_match("alice.x"));
        assert!(!t.write.is_match("bob.x"));
        assert!(t.read.is_match("v.x"));
        assert_eq!(t.write.as_str(), "^{username}\\.");
    }
}
