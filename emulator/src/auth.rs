//! Users, passwords, bearer tokens and API keys of the webapp.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Bearer tokens last 7 days.
pub const TOKEN_LIFETIME_SECS: i64 = 7 * 24 * 3600;

pub fn hash_password(salt: &str, password: &str) -> String {
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update([0u8]);
    h.update(password.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

pub fn hash_new_password(password: &str) -> (String, String) {
    let mut rng = rand::rng();
    let salt: String = (0..16).map(|_| format!("{:x}", rng.random_range(0..16u8))).collect();
    let hash = hash_password(&salt, password);
    (salt, hash)
}

/// The client's password rules: 8-64 characters with at least one digit, one
/// upper-case, one lower-case and one special character.
pub fn password_problem(p: &str) -> Option<&'static str> {
    let n = p.chars().count();
    if !(8..=64).contains(&n) {
        return Some("Password must be between 8 and 64 characters long");
    }
    if !p.chars().any(|c| c.is_ascii_digit()) {
        return Some("Password must contain at least one digit");
    }
    if !p.chars().any(|c| c.is_uppercase()) {
        return Some("Password must contain at least one upper-case letter");
    }
    if !p.chars().any(|c| c.is_lowercase()) {
        return Some("Password must contain at least one lower-case letter");
    }
    if !p.chars().any(|c| !c.is_alphanumeric()) {
        return Some("Password must contain at least one special character");
    }
    None
}

/// `WA_API_KEY` must be 12-128 characters.
pub fn api_key_valid(key: &str) -> bool {
    (12..=128).contains(&key.chars().count())
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    pub sub: String,
    pub iat: i64,
    pub exp: i64,
}

/// HS256 JSON Web Tokens signed with `WA_WEB_JWT_CRYPTO_KEY`, so any webapp
/// sharing the key accepts a token issued by another.
pub fn issue_token(key: &[u8], sub: &str, now: i64) -> (String, Claims) {
    let claims = Claims { sub: sub.to_string(), iat: now, exp: now + TOKEN_LIFETIME_SECS };
    let header = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = B64.encode(serde_json::to_vec(&claims).expect("claims serialise"));
    let signing_input = format!("{header}.{body}");
    let sig = B64.encode(sign(key, signing_input.as_bytes()));
    (format!("{signing_input}.{sig}"), claims)
}

fn sign(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

pub fn verify_token(key: &[u8], token: &str, now: i64) -> Option<Claims> {
    let (signing_input, sig) = token.rsplit_once('.')?;
    let (header, body) = signing_input.split_once('.')?;
    let header: serde_json::Value = serde_json::from_slice(&B64.decode(header).ok()?).ok()?;
    if header.get("alg")?.as_str()? != "HS256" {
        return None;
    }
    let expected = sign(key, signing_input.as_bytes());
    if !constant_time_eq(&B64.decode(sig).ok()?, &expected) {
        return None;
    }
    let claims: Claims = serde_json::from_slice(&B64.decode(body).ok()?).ok()?;
    (claims.exp > now).then_some(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_rules() {
        assert!(password_problem("Secret1!").is_none());
        assert!(password_problem("Sec1!").is_some());
        assert!(password_problem("secret12!").is_some());
        assert!(password_problem("SECRET12!").is_some());
        assert!(password_problem("Secret!!!").is_some());
        assert!(password_problem("Secret123").is_some());
        assert!(password_problem(&format!("Aa1!{}", "x".repeat(61))).is_some());
        assert!(password_problem(&format!("Aa1!{}", "x".repeat(60))).is_none());
    }

    #[test]
    fn api_key_length() {
        assert!(!api_key_valid("short"));
        assert!(api_key_valid("twelve-chars"));
        assert!(!api_key_valid(&"k".repeat(129)));
    }

    #[test]
    fn tokens_round_trip_and_expire() {
        let (t, c) = issue_token(b"key", "admin", 1000);
        assert_eq!(c.exp, 1000 + TOKEN_LIFETIME_SECS);
        assert_eq!(verify_token(b"key", &t, 2000).unwrap().sub, "admin");
        assert!(verify_token(b"other", &t, 2000).is_none());
        assert!(verify_token(b"key", &t, 1000 + TOKEN_LIFETIME_SECS).is_none());
        let mut forged = t.clone();
        forged.push('x');
        assert!(verify_token(b"key", &forged, 2000).is_none());
    }

    #[test]
    fn password_hash_depends_on_salt() {
        assert_ne!(hash_password("a", "p"), hash_password("b", "p"));
        let (salt, hash) = hash_new_password("secret");
        assert_eq!(hash_password(&salt, "secret"), hash);
    }
}
