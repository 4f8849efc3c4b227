//! The admin session: every admin call needs a Bearer token from
//! `POST /v1/users/login`. The client starts with `admin:secret` and refuses
//! any call until the first login sets a new password, so the operator moves
//! every number off the default at its first login, keeps the token (7 days)
//! and logs in again a day before it runs out.

use jiff::{SignedDuration, Timestamp};
use serde_json::Value;

use super::{CallError, Login, Webapp};

pub const ADMIN_USER: &str = "admin";
/// The password every new client starts with (Meta's documentation).
pub const DEFAULT_PASSWORD: &str = "secret";
/// Tokens last 7 days; one is renewed once less than this is left.
pub const RENEW_BEFORE: SignedDuration = SignedDuration::from_hours(24);
/// When the answer carries no readable expiry, the documented lifetime.
pub const TOKEN_LIFETIME: SignedDuration = SignedDuration::from_hours(7 * 24);

/// A cached admin token, tied to the password it was obtained with so that a
/// changed password opens a new session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub token: String,
    pub expires_at: Timestamp,
    pub password_digest: String,
}

impl Session {
    pub fn usable(&self, password_digest: &str, now: Timestamp) -> bool {
        self.password_digest == password_digest && now + RENEW_BEFORE < self.expires_at
    }
}

/// Which WhatsAppNumber a session belongs to: (namespace, name).
pub type SessionKey = (String, String);

/// The admin sessions of every number, shared by the probes and the
/// reconciles. Logins are serialised, so that two callers never race to move
/// one client off its default password.
#[derive(Default)]
pub struct Sessions {
    open: std::sync::Mutex<std::collections::HashMap<SessionKey, Session>>,
    /// The last refusal of each number's passwords: the same password is not
    /// tried again for [`REFUSED_RETRY`].
    refused: std::sync::Mutex<std::collections::HashMap<SessionKey, Refusal>>,
    login: tokio::sync::Mutex<()>,
}

/// How long a refused admin password waits before it is tried again; a new
/// password in the Secret is tried at once. Every try is two logins (the
/// password, then the default), and a client may count failed logins.
pub const REFUSED_RETRY: SignedDuration = SignedDuration::from_mins(5);

/// The webapp refused a password (and the default one) at `at`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub password_digest: String,
    pub at: Timestamp,
    pub details: String,
}

impl Refusal {
    /// Whether this refusal still answers for `password_digest` at `now`.
    pub fn stands(&self, password_digest: &str, now: Timestamp) -> bool {
        self.password_digest == password_digest && now < self.at + REFUSED_RETRY
    }
}

impl Sessions {
    /// The token of a usable session, opening one when there is none.
    /// Returns whether the client's password was changed to `password` just now.
    pub async fn token(
        &self,
        key: &SessionKey,
        webapp: &Webapp<'_>,
        password: &str,
    ) -> Result<(String, bool), SessionError> {
        let digest = password_digest(password);
        if let Some(token) = self.cached(key, &digest) {
            return Ok((token, false));
        }
        let _login = self.login.lock().await;
        // Another caller may have logged in while this one waited.
        if let Some(token) = self.cached(key, &digest) {
            return Ok((token, false));
        }
        let now = Timestamp::now();
        if let Some(refusal) = self.refusal(key).filter(|r| r.stands(&digest, now)) {
            return Err(SessionError::PasswordRefused(refusal.details));
        }
        let (session, changed) = match open(webapp, password, &digest, now).await {
            Ok(opened) => opened,
            Err(SessionError::PasswordRefused(details)) => {
                let refusal = Refusal { password_digest: digest, at: now, details: details.clone() };
                self.refused.lock().expect("session lock").insert(key.clone(), refusal);
                return Err(SessionError::PasswordRefused(details));
            }
            Err(e) => return Err(e),
        };
        self.refused.lock().expect("session lock").remove(key);
        let token = session.token.clone();
        self.open.lock().expect("session lock").insert(key.clone(), session);
        Ok((token, changed))
    }

    fn refusal(&self, key: &SessionKey) -> Option<Refusal> {
        self.refused.lock().expect("session lock").get(key).cloned()
    }

    fn cached(&self, key: &SessionKey, password_digest: &str) -> Option<String> {
        let sessions = self.open.lock().expect("session lock");
        sessions.get(key).filter(|s| s.usable(password_digest, Timestamp::now())).map(|s| s.token.clone())
    }

    /// Drops a session the client refused, or one of a deleted number.
    pub fn forget(&self, key: &SessionKey) {
        self.open.lock().expect("session lock").remove(key);
    }

    /// Forgets everything of a deleted number, its refusals included.
    pub fn forget_number(&self, key: &SessionKey) {
        self.forget(key);
        self.refused.lock().expect("session lock").remove(key);
    }
}

/// Ties a session to the password it was opened with, without keeping the password.
fn password_digest(password: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(password.as_bytes()).iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Why no admin session could be opened, in words a person can act on.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(
        "the webapp refused the admin password from the Secret and the default one: put the admin user's current password in the admin password Secret ({0})"
    )]
    PasswordRefused(String),
    #[error(transparent)]
    Call(#[from] CallError),
}

impl SessionError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, SessionError::Call(e) if e.is_retryable())
    }

    /// The same words for the same trouble, for a condition: an unreachable
    /// webapp's low-level reason (a refused connection, a name that did not
    /// resolve this time and timed out the next) changes from try to try, and
    /// each change would be a status write.
    pub fn summary(&self) -> String {
        match self {
            SessionError::Call(CallError::Unreachable { url, reason, .. }) => {
                format!("the webapp at {url} cannot be reached for an admin session: {}", unreachable_kind(reason))
            }
            other => other.to_string(),
        }
    }
}

/// What kind of trouble an unreachable webapp's reason names, in words that
/// stay the same for the same kind.
fn unreachable_kind(reason: &str) -> &'static str {
    let reason = reason.to_ascii_lowercase();
    if ["dns", "resolve", "lookup", "name or service"].iter().any(|k| reason.contains(k)) {
        "its name does not resolve"
    } else if reason.contains("timed out") || reason.contains("timeout") {
        "it timed out"
    } else if reason.contains("refused") {
        "the connection was refused"
    } else if ["certificate", "tls", "handshake"].iter().any(|k| reason.contains(k)) {
        "TLS failed"
    } else {
        "no answer"
    }
}

/// Logs in with `password`; a client still on its default password gets
/// `password` as its new one. Returns the session and whether the password
/// was changed just now.
pub async fn open(
    webapp: &Webapp<'_>,
    password: &str,
    password_digest: &str,
    now: Timestamp,
) -> Result<(Session, bool), SessionError> {
    let (login, changed) = match webapp.login(password, None).await {
        Ok(login) => (login, false),
        Err(CallError::Status { status: 401, .. }) => match webapp.login(DEFAULT_PASSWORD, Some(password)).await {
            Ok(login) => (login, true),
            Err(CallError::Status { status: 401 | 400, details, .. }) => {
                return Err(SessionError::PasswordRefused(details));
            }
            Err(e) => return Err(e.into()),
        },
        Err(e) => return Err(e.into()),
    };
    let expires_at = login.expires_after.unwrap_or(now + TOKEN_LIFETIME);
    Ok((Session { token: login.token, expires_at, password_digest: password_digest.to_string() }, changed))
}

/// `{"users":[{"token":"...","expires_after":"2018-03-01 15:29:26+00:00"}]}`.
pub fn parse_login(body: &[u8]) -> Result<Login, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let user = v.pointer("/users/0").ok_or("no users[0] in the login answer")?;
    let token = user.get("token").and_then(Value::as_str).filter(|t| !t.is_empty()).ok_or("no token")?;
    let expires_after = user.get("expires_after").and_then(Value::as_str).and_then(parse_expiry);
    Ok(Login { token: token.to_string(), expires_after })
}

/// The client writes `YYYY-MM-DD HH:MM:SS+00:00`; RFC 3339 is accepted too.
fn parse_expiry(s: &str) -> Option<Timestamp> {
    s.parse::<Timestamp>().ok().or_else(|| s.replacen(' ', "T", 1).parse::<Timestamp>().ok())
}

/// The client's password rule: 8-64 characters with a digit, an upper and a
/// lower case letter and a special character.
pub fn acceptable_password(p: &str) -> bool {
    (8..=64).contains(&p.chars().count())
        && p.chars().any(|c| c.is_ascii_digit())
        && p.chars().any(|c| c.is_ascii_uppercase())
        && p.chars().any(|c| c.is_ascii_lowercase())
        && p.chars().any(|c| !c.is_ascii_alphanumeric())
}

/// A random password that satisfies the client's rule.
pub fn generate_password() -> String {
    use rand::Rng;
    use rand::distr::Alphanumeric;
    let mut rng = rand::rng();
    let body: String = (&mut rng).sample_iter(&Alphanumeric).take(40).map(char::from).collect();
    // The fixed classes guarantee the rule whatever the random part holds.
    format!("{body}-Aa1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_answer_is_read_with_the_clients_date_format() {
        let login =
            parse_login(br#"{"users":[{"token":"eyJ","expires_after":"2018-03-01 15:29:26+00:00"}]}"#).expect("parses");
        assert_eq!(login.token, "eyJ");
        assert_eq!(login.expires_after, Some("2018-03-01T15:29:26Z".parse().unwrap()));
        assert!(parse_login(br#"{"users":[{"token":""}]}"#).is_err());
        assert!(parse_login(br#"{"errors":[]}"#).is_err());
        let no_date = parse_login(br#"{"users":[{"token":"t"}]}"#).unwrap();
        assert_eq!(no_date.expires_after, None);
    }

    #[test]
    fn generated_passwords_follow_the_clients_rule() {
        for _ in 0..50 {
            let p = generate_password();
            assert!(acceptable_password(&p), "{p}");
        }
        assert!(!acceptable_password("secret"));
        assert!(!acceptable_password("Abcdefg1"), "no special character");
        assert!(acceptable_password("Abcdef1!"));
    }

    #[test]
    fn a_session_is_renewed_a_day_before_it_expires_or_when_the_password_changes() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let s = Session { token: "t".into(), expires_at: now + TOKEN_LIFETIME, password_digest: "p1".into() };
        assert!(s.usable("p1", now));
        assert!(!s.usable("p2", now), "another password");
        assert!(s.usable("p1", now + SignedDuration::from_hours(6 * 24 - 1)));
        assert!(!s.usable("p1", now + SignedDuration::from_hours(6 * 24 + 1)), "renewed within a day of expiry");
    }

    #[test]
    fn a_refused_password_waits_unless_the_secret_changes() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let refusal = Refusal { password_digest: "p1".into(), at: now, details: "1005".into() };
        assert!(refusal.stands("p1", now + SignedDuration::from_mins(4)), "not tried again at every probe");
        assert!(!refusal.stands("p1", now + REFUSED_RETRY), "tried again after a while");
        assert!(!refusal.stands("p2", now), "a new password in the Secret is tried at once");
    }

    #[test]
    fn an_unreachable_webapp_is_summed_up_the_same_way_each_time() {
        let unreachable = |reason: &str| {
            SessionError::Call(CallError::Unreachable {
                url: "https://acme-webapp:443".into(),
                reason: reason.into(),
                may_have_arrived: false,
            })
        };
        let first = unreachable("dns error: Name or service not known").summary();
        assert_eq!(first, unreachable("dns error: Temporary failure in name resolution").summary());
        assert!(first.contains("https://acme-webapp:443") && first.contains("does not resolve"), "{first}");
        assert!(unreachable("timed out").summary().ends_with("it timed out"), "a hanging webapp says so");
        let slow_lookup = "client error (Connect): dns lookup of acme-webapp timed out";
        assert_eq!(unreachable(slow_lookup).summary(), first, "a lookup that gave up is a lookup that failed");
        assert!(unreachable("tcp connect error: Connection refused (os error 111)").summary().ends_with("refused"));
        let refused = SessionError::PasswordRefused("1005".into());
        assert_eq!(refused.summary(), refused.to_string(), "what a person must act on keeps its words");
    }
}
