//! Strings of a fixed spelling kept as the bytes they spell: the digests the
//! operator writes (32 lowercase hex digits) and the uids the API server
//! gives (lowercase hex in the 8-4-4-4-12 form). Every child's outline keeps
//! two digests and a uid; as strings each took a 48-byte allocation besides
//! its pointer, as bytes they take none.

use std::fmt;

/// A digest or a uid in 16 bytes; anything else spelled (a hand-edited
/// annotation, a uid of another form) kept as it is.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Compact {
    Bytes(Spelling, [u8; 16]),
    Text(Box<str>),
}

/// How bytes were spelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Spelling {
    /// 32 hex digits.
    Digest,
    /// 8-4-4-4-12 hex digits.
    Uid,
}

/// Where a uid's dashes are.
const UID_DASHES: [usize; 4] = [8, 13, 18, 23];
/// The bytes that begin a uid's groups after the first: a dash goes before each.
const UID_GROUPS: [usize; 4] = [4, 6, 8, 10];

impl Compact {
    pub fn new(text: &str) -> Self {
        let spelling = match text.len() {
            32 => Spelling::Digest,
            36 if UID_DASHES.iter().all(|&i| text.as_bytes()[i] == b'-') => Spelling::Uid,
            _ => return Self::Text(text.into()),
        };
        let mut digits = text.bytes().filter(|&b| b != b'-');
        let mut bytes = [0u8; 16];
        for byte in &mut bytes {
            match (digits.next().and_then(hex_value), digits.next().and_then(hex_value)) {
                (Some(high), Some(low)) => *byte = high << 4 | low,
                _ => return Self::Text(text.into()),
            }
        }
        Self::Bytes(spelling, bytes)
    }

    /// Whether `text` is what this spells.
    pub fn is(&self, text: &str) -> bool {
        match self {
            Self::Text(own) => **own == *text,
            bytes => *bytes == Self::new(text),
        }
    }
}

/// The value of a lowercase hex digit; `None` for anything else (an
/// uppercase digit would not spell the same string back).
fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    }
}

impl Default for Compact {
    fn default() -> Self {
        Self::Text(Box::default())
    }
}

impl From<&str> for Compact {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

impl fmt::Display for Compact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text(text) => f.write_str(text),
            Self::Bytes(spelling, bytes) => {
                for (i, byte) in bytes.iter().enumerate() {
                    if *spelling == Spelling::Uid && UID_GROUPS.contains(&i) {
                        f.write_str("-")?;
                    }
                    write!(f, "{byte:02x}")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Debug for Compact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_and_uids_read_back_as_they_were_spelled() {
        let digest = "0123456789abcdef0123456789abcdef";
        let uid = "0b6a3c1e-5c8f-4a51-9a1e-3f0c2f5b9d11";
        for text in [digest, uid] {
            let kept = Compact::new(text);
            assert!(matches!(kept, Compact::Bytes(..)), "{text}");
            assert_eq!(kept.to_string(), text);
            assert!(kept.is(text));
        }
        assert_eq!(Compact::new(digest), Compact::new(digest));
        assert_ne!(Compact::new(digest), Compact::new("0123456789abcdef0123456789abcdee"));
        assert!(!Compact::new(digest).is("0123456789abcdef0123456789abcdee"));
    }

    #[test]
    fn other_spellings_are_kept_as_they_are() {
        for text in [
            "",
            "h1",
            "0123456789ABCDEF0123456789ABCDEF",
            "0123456789abcdef0123456789abcdeg",
            "0b6a3c1e-5c8f-4a51-9a1e-3f0c2f5b9d1-",
            "0b6a3c1e05c8f04a5109a1e03f0c2f5b9d11",
        ] {
            let kept = Compact::new(text);
            assert!(matches!(kept, Compact::Text(_)), "{text}");
            assert_eq!(kept.to_string(), text);
            assert!(kept.is(text));
        }
        let uid = "0b6a3c1e-5c8f-4a51-9a1e-3f0c2f5b9d11";
        assert!(!Compact::new(&uid.replace('-', "")).is(uid), "same digits, other spelling");
        assert!(!Compact::new(uid).is(&uid.to_uppercase()));
        assert!(Compact::new(uid).to_string().len() == 36 && std::mem::size_of::<Option<Compact>>() <= 24);
    }
}
