//! Users and the SASL mechanisms PLAIN and AMQPLAIN.
//!
//! The user store holds the default user from the configuration; vhosts, permissions and
//! password hashing come with the management work (issue 6).

use warren_amqp::codec::Reader;
use warren_amqp::{FieldTable, ProtocolError, ReplyCode};

#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    password: String,
    pub loopback_only: bool,
}

#[derive(Debug, Default)]
pub struct Users {
    users: Vec<User>,
}

/// The mechanisms offered in connection.start, in RabbitMQ's order.
pub const MECHANISMS: &str = "PLAIN AMQPLAIN";

fn refused(detail: &str) -> ProtocolError {
    ProtocolError::new(ReplyCode::AccessRefused, detail)
}

impl Users {
    pub fn add(&mut self, name: &str, password: &str, loopback_only: bool) {
        self.users.retain(|u| u.name != name);
        self.users.push(User { name: name.into(), password: password.into(), loopback_only });
    }

    /// Checks a connection.start-ok response; returns the user name.
    pub fn authenticate(
        &self,
        mechanism: &str,
        response: &[u8],
        peer_is_loopback: bool,
    ) -> Result<String, ProtocolError> {
        let (name, password) = match mechanism {
            "PLAIN" => parse_plain(response)?,
            "AMQPLAIN" => parse_amqplain(response)?,
            other => {
                return Err(refused(&format!("unsupported authentication mechanism '{other}', offered: {MECHANISMS}")))
            }
        };
        let user = self.users.iter().find(|u| u.name == name && u.password == password);
        match user {
            Some(u) if u.loopback_only && !peer_is_loopback => {
                Err(refused(&format!("user '{name}' can only connect via localhost")))
            }
            Some(u) => Ok(u.name.clone()),
            None => Err(refused(&format!(
                "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
            ))),
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

    #[test]
    fn plain_accepts_right_password_only() {
        let u = users();
        assert_eq!(u.authenticate("PLAIN", b"\0guest\0guest", true).expect("ok"), "guest");
        assert_eq!(u.authenticate("PLAIN", b"\0guest\0wrong", true).expect_err("bad").code, ReplyCode::AccessRefused);
        assert!(u.authenticate("PLAIN", b"garbage", true).is_err());
    }

    #[test]
    fn guest_is_loopback_only() {
        let u = users();
        assert!(u.authenticate("PLAIN", b"\0guest\0guest", false).is_err());
        assert!(u.authenticate("PLAIN", b"\0app\0secret", false).is_ok());
    }

    #[test]
    fn amqplain_reads_the_table() {
        let mut t = FieldTable::new();
        t.insert("LOGIN", "app".into());
        t.insert("PASSWORD", "secret".into());
        let mut out = bytes::BytesMut::new();
        t.encode(&mut out);
        assert_eq!(users().authenticate("AMQPLAIN", &out[4..], true).expect("ok"), "app");
    }
}
