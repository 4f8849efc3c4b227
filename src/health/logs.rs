//! Evidence of a second instance of the number, from the nodes' logs.
//!
//! The client says nothing about a second instance in `/v1/health`: the
//! instance that was kicked off reports its nodes `disconnected` like any
//! outage, and its coreapp logs "Conflict: Detected multiple instances that
//! share the same number" (docs/client.md). So while a registered number is
//! down, the probe reads the recent log of each of the number's masters and
//! coreapps and looks for that line. Pure: the reading is in `crate::probes`.

use std::time::Duration;

use jiff::Timestamp;

use super::report::{self, Verdict};

/// The part of the client's log line that names the conflict.
pub const CONFLICT_LINE: &str = "Detected multiple instances that share the same number";

/// At most this many of a node's last log lines are read: a chatty node
/// costs one bounded read.
pub const MAX_LINES: i64 = 2000;

/// At most this much of the line goes into status.
const MAX_SHOWN: usize = 512;

/// How far back a read looks. A probe reads the logs only once it finds the
/// number down, so the window covers the time since the probe before (two
/// intervals and its deadline) and at least five minutes, for a webapp that
/// did not answer the probe right after the kick.
pub fn window(interval: Duration, timeout: Duration) -> Duration {
    (interval * 2 + timeout * 5).max(Duration::from_secs(300))
}

/// How far back to read now: the window, but nothing from before the number
/// was last seen healthy. A line logged before that is history: the side
/// that won a conflict logs it too, and the number was well after it.
pub fn since(window: Duration, healthy_at: Option<Timestamp>, now: Timestamp) -> Duration {
    let Some(at) = healthy_at else { return window };
    let healthy_for = now.duration_since(at).as_secs().max(0) as u64;
    window.min(Duration::from_secs(healthy_for + 1))
}

/// `line` cut to what status shows.
pub fn clipped(line: &str) -> String {
    match line.char_indices().nth(MAX_SHOWN) {
        Some((end, _)) => format!("{}...", &line[..end]),
        None => line.to_string(),
    }
}

/// Whether a verdict may hide a kicked-off instance, so that the logs are
/// worth reading: the client answered, and is down without being
/// unregistered (a number logged off or never registered) or initialising
/// (a schema upgrade stops the nodes on purpose).
pub fn worth_reading(verdict: &Verdict) -> bool {
    !verdict.healthy && ![report::UNREGISTERED, report::UNINITIALIZED].contains(&verdict.reason)
}

/// The last line of `log` that names the conflict, trimmed.
pub fn conflict_line(log: &str) -> Option<&str> {
    log.lines().rev().find(|l| l.contains(CONFLICT_LINE)).map(str::trim)
}

/// What one node's log showed: which pod logged the line, and the line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub pod: String,
    pub line: String,
}

/// The verdict once the logs are read: a node that logged the conflict names
/// the problem, whatever else the health shows. A healthy verdict stands: a
/// line from before the number connected again is history.
pub fn with_conflict(verdict: Verdict, conflict: Option<&Conflict>) -> Verdict {
    match conflict {
        Some(c) if !verdict.healthy => Verdict {
            reason: report::NUMBER_CONFLICT,
            message: format!(
                "another client instance uses this phone number and WhatsApp kicked this one off; stop the other \
                 instance. Pod {} logged: {}",
                c.pod, c.line
            ),
            ..verdict
        },
        _ => verdict,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::report::{judge, parse};

    fn verdict(body: &str) -> Verdict {
        judge(&parse(body.as_bytes()).unwrap(), 1)
    }

    const KICKED: &str = r#"{"health":{
        "10.0.0.5:a":{"gateway_status":"disconnected","role":"primary_master"},
        "10.0.0.7:c":{"gateway_status":"disconnected","role":"coreapp"}}}"#;

    fn conflict() -> Conflict {
        Conflict {
            pod: "acme-coreapp-0".into(),
            line: "ERROR Conflict: Detected multiple instances that share the same number".into(),
        }
    }

    #[test]
    fn the_last_conflict_line_is_found() {
        let log = "INFO connected\n2024-03-01 ERROR node=c1 Conflict: Detected multiple instances that share the same \
                   number \nINFO reconnecting\n";
        assert_eq!(
            conflict_line(log),
            Some("2024-03-01 ERROR node=c1 Conflict: Detected multiple instances that share the same number")
        );
        assert_eq!(conflict_line("INFO connected\nWARN Conflict: something else\n"), None);
        assert_eq!(conflict_line(""), None);
    }

    #[test]
    fn logs_are_read_only_while_a_registered_number_is_down() {
        assert!(worth_reading(&verdict(KICKED)));
        let healthy = r#"{"health":{"10.0.0.5:a":{"gateway_status":"disconnected","role":"primary_master"},
            "10.0.0.7:c":{"gateway_status":"connected","role":"coreapp"}}}"#;
        assert!(!worth_reading(&verdict(healthy)));
        assert!(!worth_reading(&verdict(&KICKED.replace("disconnected", "unregistered"))));
        assert!(!worth_reading(&verdict(&KICKED.replace("disconnected", "uninitialized"))));
        // Nodes the webapp cannot reach may have failed after the kick.
        let unreachable = r#"{"health":{"10.0.0.5:a":{"errors":[{"code":1011,"title":"Service not ready"}]}}}"#;
        assert!(worth_reading(&verdict(unreachable)));
    }

    #[test]
    fn a_logged_conflict_names_a_down_verdict() {
        let v = with_conflict(verdict(KICKED), Some(&conflict()));
        assert_eq!(v.reason, report::NUMBER_CONFLICT);
        assert!(!v.healthy);
        assert!(v.message.contains("acme-coreapp-0"), "{}", v.message);
        assert!(v.message.contains(CONFLICT_LINE), "{}", v.message);
        assert_eq!(v.gateway, "disconnected");
        assert_eq!(with_conflict(verdict(KICKED), None).reason, report::SHARDS_NOT_CONNECTED);
    }

    #[test]
    fn a_healthy_verdict_ignores_old_lines() {
        let healthy = r#"{"health":{"10.0.0.5:a":{"gateway_status":"disconnected","role":"primary_master"},
            "10.0.0.7:c":{"gateway_status":"connected","role":"coreapp"}}}"#;
        let v = with_conflict(verdict(healthy), Some(&conflict()));
        assert!(v.healthy);
        assert_eq!(v.reason, report::GATEWAY_CONNECTED);
    }

    #[test]
    fn lines_from_before_the_number_was_last_healthy_are_history() {
        let t = |s: i64| Timestamp::from_second(s).unwrap();
        let window = Duration::from_secs(300);
        assert_eq!(since(window, None, t(1000)), window, "never seen healthy: the whole window");
        assert_eq!(since(window, Some(t(960)), t(1000)), Duration::from_secs(41));
        assert_eq!(since(window, Some(t(100)), t(1000)), window);
        assert_eq!(since(window, Some(t(1005)), t(1000)), Duration::from_secs(1), "clocks apart");
    }

    #[test]
    fn long_lines_are_clipped() {
        assert_eq!(clipped("short"), "short");
        let long = "é".repeat(600);
        let shown = clipped(&long);
        assert_eq!(shown.chars().count(), 512 + 3);
        assert!(shown.ends_with("..."));
    }

    #[test]
    fn the_window_covers_the_probe_before() {
        assert_eq!(window(Duration::from_secs(30), Duration::from_secs(5)), Duration::from_secs(300));
        assert_eq!(window(Duration::from_secs(600), Duration::from_secs(10)), Duration::from_secs(1250));
    }
}
