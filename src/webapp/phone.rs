//! Splitting an E.164 number into the `cc` and `phone_number` the client's
//! account API takes.
//!
//! Country calling codes form a prefix code: 1 and 7 are the only one-digit
//! codes, the two-digit codes below are complete, and every other code has
//! three digits.

const TWO_DIGIT: [&str; 44] = [
    "20", "27", "30", "31", "32", "33", "34", "36", "39", "40", "41", "43", "44", "45", "46", "47", "48", "49", "51",
    "52", "53", "54", "55", "56", "57", "58", "60", "61", "62", "63", "64", "65", "66", "81", "82", "84", "86", "90",
    "91", "92", "93", "94", "95", "98",
];

/// `+15550001111` -> `("1", "5550001111")`; `None` when it is not E.164.
pub fn split(e164: &str) -> Option<(String, String)> {
    let digits = e164.strip_prefix('+')?;
    if !(7..=15).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.starts_with('0') {
        return None;
    }
    let len = if digits.starts_with('1') || digits.starts_with('7') {
        1
    } else if TWO_DIGIT.contains(&&digits[..2]) {
        2
    } else {
        3
    };
    Some((digits[..len].to_string(), digits[len..].to_string()))
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn country_codes_of_each_length() {
        let s = |n: &str| split(n).map(|(a, b)| format!("{a}|{b}"));
        assert_eq!(s("+15550001111").as_deref(), Some("1|5550001111"));
        assert_eq!(s("+79161234567").as_deref(), Some("7|9161234567"));
        assert_eq!(s("+4915112345678").as_deref(), Some("49|15112345678"));
        assert_eq!(s("+919876543210").as_deref(), Some("91|9876543210"));
        assert_eq!(s("+5511987654321").as_deref(), Some("55|11987654321"));
        assert_eq!(s("+353871234567").as_deref(), Some("353|871234567"));
        assert_eq!(s("+2348031234567").as_deref(), Some("234|8031234567"));
        assert_eq!(s("+971501234567").as_deref(), Some("971|501234567"));
    }

    #[test]
    fn rejects_what_is_not_e164() {
        for bad in ["15550001111", "+0555000111", "+12", "+1234567890123456", "+1555abc1111", ""] {
            assert_eq!(split(bad), None, "{bad}");
        }
    }
}
