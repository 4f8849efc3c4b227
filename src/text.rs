//! Short texts for status messages and events, shared by the steps that
//! quote what the cluster reports.

/// The longest start of `s` of at most `max` bytes that ends on a character
/// boundary.
pub fn prefix(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `s` cut to at most `max` bytes (on a character boundary), with `…` when cut.
pub fn clip(s: &str, max: usize) -> String {
    match prefix(s, max) {
        whole if whole.len() == s.len() => s.to_string(),
        start => format!("{start}…"),
    }
}

/// How a container ended, as status tells it: `exit code 1`, or with the
/// kubelet's reason when it says more than `Error` (`exit code 137 (OOMKilled)`).
pub fn exit(code: i32, reason: Option<&str>) -> String {
    match reason.filter(|r| !r.is_empty() && *r != "Error") {
        Some(reason) => format!("exit code {code} ({reason})"),
        None => format!("exit code {code}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_on_a_character_boundary() {
        // `é` spans bytes 2 and 3.
        assert_eq!(prefix("abé", 3), "ab");
        assert_eq!(prefix("abé", 4), "abé");
        assert_eq!(clip("abé", 3), "ab…");
        assert_eq!(clip("abé", 9), "abé");
    }

    #[test]
    fn an_exit_names_the_reason_only_when_it_says_more() {
        assert_eq!(exit(1, Some("Error")), "exit code 1");
        assert_eq!(exit(1, None), "exit code 1");
        assert_eq!(exit(137, Some("OOMKilled")), "exit code 137 (OOMKilled)");
    }
}
