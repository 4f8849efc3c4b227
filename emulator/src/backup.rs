//! Backup and restore of the settings (`/v1/settings/backup`,
//! `/v1/settings/restore`): the registration, the application settings and
//! the shard count, encrypted with the caller's password.
//!
//! `data` is base64 of `MAGIC | salt (16) | check (16) | nonce (16) |
//! ciphertext | tag (32)`. Keys come from PBKDF2-HMAC-SHA256 of the password
//! and the salt; the ciphertext is the JSON XORed with an HMAC-SHA256
//! keystream and the tag an HMAC-SHA256 over everything before it
//! (encrypt-then-MAC). `check` tells a wrong password apart from damaged
//! data. Built on the crates the emulator already has; it keeps the backup
//! opaque and password-bound, and is no model of the client's own format.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

const MAGIC: &[u8; 8] = b"WAEMUBK1";
const SALT: usize = 16;
const CHECK: usize = 16;
const NONCE: usize = 16;
const TAG: usize = 32;
const ITERATIONS: u32 = 10_000;

#[derive(Debug, PartialEq, Eq)]
pub enum OpenError {
    /// Not base64, not an emulator backup, or truncated.
    Malformed,
    WrongPassword,
    /// Right password, but the data was altered.
    Damaged,
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length")
}

/// PBKDF2-HMAC-SHA256, block `index` (RFC 8018).
fn pbkdf2_block(password: &[u8], salt: &[u8], index: u32) -> [u8; 32] {
    let mut m = mac(password);
    m.update(salt);
    m.update(&index.to_be_bytes());
    let mut u: [u8; 32] = m.finalize().into_bytes().into();
    let mut out = u;
    for _ in 1..ITERATIONS {
        let mut m = mac(password);
        m.update(&u);
        u = m.finalize().into_bytes().into();
        out.iter_mut().zip(u.iter()).for_each(|(o, x)| *o ^= x);
    }
    out
}

struct Keys {
    enc: [u8; 32],
    auth: [u8; 32],
    check: [u8; CHECK],
}

fn derive(password: &str, salt: &[u8]) -> Keys {
    let p = password.as_bytes();
    let check = pbkdf2_block(p, salt, 3);
    Keys {
        enc: pbkdf2_block(p, salt, 1),
        auth: pbkdf2_block(p, salt, 2),
        check: check[..CHECK].try_into().expect("CHECK bytes"),
    }
}

/// XORs `data` with the keystream HMAC(enc, nonce | counter).
fn apply_keystream(key: &[u8; 32], nonce: &[u8], data: &mut [u8]) {
    for (i, chunk) in data.chunks_mut(32).enumerate() {
        let mut m = mac(key);
        m.update(nonce);
        m.update(&(i as u64).to_be_bytes());
        let block = m.finalize().into_bytes();
        chunk.iter_mut().zip(block.iter()).for_each(|(c, k)| *c ^= k);
    }
}

fn tag(key: &[u8; 32], data: &[u8]) -> [u8; TAG] {
    let mut m = mac(key);
    m.update(data);
    m.finalize().into_bytes().into()
}

/// Encrypts `plain` with `password`; the result is the backup's `data`.
pub fn seal(password: &str, plain: &[u8]) -> String {
    let mut rng = rand::rng();
    let mut salt = [0u8; SALT];
    let mut nonce = [0u8; NONCE];
    rng.fill_bytes(&mut salt);
    rng.fill_bytes(&mut nonce);
    let keys = derive(password, &salt);
    let mut out = Vec::with_capacity(MAGIC.len() + SALT + CHECK + NONCE + plain.len() + TAG);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&salt);
    out.extend_from_slice(&keys.check);
    out.extend_from_slice(&nonce);
    let start = out.len();
    out.extend_from_slice(plain);
    apply_keystream(&keys.enc, &nonce, &mut out[start..]);
    let t = tag(&keys.auth, &out);
    out.extend_from_slice(&t);
    base64::engine::general_purpose::STANDARD.encode(out)
}

/// Decrypts a backup's `data` with `password`.
pub fn open(password: &str, data: &str) -> Result<Vec<u8>, OpenError> {
    let raw = base64::engine::general_purpose::STANDARD.decode(data.trim()).map_err(|_| OpenError::Malformed)?;
    let head = MAGIC.len() + SALT + CHECK + NONCE;
    if raw.len() < head + TAG || &raw[..MAGIC.len()] != MAGIC {
        return Err(OpenError::Malformed);
    }
    let salt = &raw[MAGIC.len()..MAGIC.len() + SALT];
    let check = &raw[MAGIC.len() + SALT..MAGIC.len() + SALT + CHECK];
    let nonce = &raw[head - NONCE..head];
    let keys = derive(password, salt);
    if !crate::auth::constant_time_eq(check, &keys.check) {
        return Err(OpenError::WrongPassword);
    }
    let (body, t) = raw.split_at(raw.len() - TAG);
    if !crate::auth::constant_time_eq(t, &tag(&keys.auth, body)) {
        return Err(OpenError::Damaged);
    }
    let mut plain = body[head..].to_vec();
    apply_keystream(&keys.enc, nonce, &mut plain);
    Ok(plain)
}

/// What a backup holds, before encryption.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Contents {
    /// Version of this layout.
    pub format: u32,
    /// The client version that made the backup.
    pub client_version: String,
    pub created_at: String,
    /// The deployment (database) the backup was made on.
    pub deployment: String,
    pub registration: Option<Registration>,
    pub shards: u64,
    /// Live masters and coreapps when the backup was made: Meta requires the
    /// new setup to have the same numbers.
    pub masters: u64,
    pub coreapps: u64,
    /// Every application setting, as `GET /v1/settings/application` answers.
    pub application: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Registration {
    /// Digits, country code first.
    pub number: String,
    /// When the number was registered (epoch ms); restored as is, so that
    /// the 7-day rule of set-shards counts from the original registration.
    pub registered_at_ms: Option<i64>,
}

pub const FORMAT: u32 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_failures() {
        let data = seal("Backup-Pass-1", b"{\"a\":1}");
        assert_eq!(open("Backup-Pass-1", &data).unwrap(), b"{\"a\":1}");
        assert_eq!(open("another", &data), Err(OpenError::WrongPassword));
        assert_eq!(open("Backup-Pass-1", "bm90IGEgYmFja3Vw"), Err(OpenError::Malformed));
        assert_eq!(open("Backup-Pass-1", "%%%"), Err(OpenError::Malformed));
        let mut raw = base64::engine::general_purpose::STANDARD.decode(&data).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        let damaged = base64::engine::general_purpose::STANDARD.encode(raw);
        assert_eq!(open("Backup-Pass-1", &damaged), Err(OpenError::Damaged));
        assert_ne!(seal("p", b"x"), seal("p", b"x"), "salt and nonce are random");
    }
}
