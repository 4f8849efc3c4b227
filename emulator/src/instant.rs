//! Instants as the emulator writes and reads them: RFC 3339 in the shape its
//! answers, backups and certificates have always had, so that clients and
//! tests see the same strings.

use jiff::civil::DateTime;
use jiff::fmt::temporal::Pieces;
use jiff::tz::Offset;
use jiff::{SignedDuration, Timestamp};

/// RFC 3339 in UTC with a `+00:00` offset (not `Z`), and a fraction only when
/// there is one, in milliseconds, microseconds or nanoseconds
/// (`.120`, not `.12`).
pub fn rfc3339(t: Timestamp) -> String {
    // The civil time: its fraction is never negative, unlike the timestamp's.
    let civil = Offset::UTC.to_datetime(t);
    let fraction = match civil.subsec_nanosecond() {
        0 => String::new(),
        n if n % 1_000_000 == 0 => format!(".{:03}", n / 1_000_000),
        n if n % 1_000 == 0 => format!(".{:06}", n / 1_000),
        n => format!(".{n:09}"),
    };
    format!("{}{fraction}+00:00", civil.strftime("%Y-%m-%dT%H:%M:%S"))
}

/// Parses an RFC 3339 instant with any offset. Beyond what jiff reads, it
/// takes more than nine fractional digits (the rest is dropped), a U+2212
/// minus in the offset, as RFC 3339 parsers commonly do, and the last hours
/// of 9999 (see [`from_utc`]).
pub fn parse_rfc3339(s: &str) -> Result<Timestamp, jiff::Error> {
    s.parse().or_else(|e| {
        let relaxed = relax(s);
        relaxed.parse().or_else(|_| past_the_last(&relaxed).ok_or(e))
    })
}

/// The instant of a civil time in UTC. Jiff's instants end at
/// 9999-12-30T22:00Z; a later time, such as a `9999-12-31` meant as "never",
/// is read as the last instant.
pub fn from_utc(utc: DateTime) -> Timestamp {
    Offset::UTC.to_timestamp(utc).unwrap_or(if utc.year() > 0 { Timestamp::MAX } else { Timestamp::MIN })
}

/// An RFC 3339 instant too late for jiff's parser, as [`from_utc`] reads it.
fn past_the_last(s: &str) -> Option<Timestamp> {
    let pieces = Pieces::parse(s).ok()?;
    let offset = pieces.offset()?.to_numeric_offset();
    let local = pieces.date().to_datetime(pieces.time()?);
    Some(match local.checked_sub(SignedDuration::from_secs(offset.seconds().into())) {
        Ok(utc) => from_utc(utc),
        // West of UTC, the last civil day of 9999 can end past it.
        Err(_) if offset.is_negative() => Timestamp::MAX,
        Err(_) => Timestamp::MIN,
    })
}

/// `s` with the fraction cut to nine digits and a U+2212 offset sign made ASCII.
fn relax(s: &str) -> String {
    // `YYYY-MM-DDTHH:MM:SS` is 19 bytes; a fraction and the offset follow.
    let (Some(head), Some(tail)) = (s.get(..19), s.get(19..)) else {
        return s.to_string();
    };
    let tail = match tail.strip_prefix('.') {
        Some(rest) => {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            format!(".{}{}", &rest[..digits.min(9)], &rest[digits..])
        }
        None => tail.to_string(),
    };
    format!("{head}{}", tail.replace('\u{2212}', "-"))
}

/// `days` days after `t`, or before it when negative. Past the instants
/// jiff represents (the years -9999 to 9999) it stops at the last or the
/// first: as good as never, or always.
pub fn days_after(t: Timestamp, days: i64) -> Timestamp {
    let moved = days.checked_mul(86_400).and_then(|s| t.checked_add(SignedDuration::from_secs(s)).ok());
    moved.unwrap_or(if days > 0 { Timestamp::MAX } else { Timestamp::MIN })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        parse_rfc3339(s).unwrap()
    }

    #[test]
    fn written_with_an_offset_and_fractions_in_groups_of_three() {
        assert_eq!(rfc3339(at("2024-01-01T00:00:00Z")), "2024-01-01T00:00:00+00:00");
        assert_eq!(rfc3339(at("2024-01-01T00:00:00.12Z")), "2024-01-01T00:00:00.120+00:00");
        assert_eq!(rfc3339(at("2024-01-01T00:00:00.1234Z")), "2024-01-01T00:00:00.123400+00:00");
        assert_eq!(rfc3339(at("2024-01-01T00:00:00.000000001Z")), "2024-01-01T00:00:00.000000001+00:00");
        assert_eq!(rfc3339(at("1969-12-31T23:59:59.5Z")), "1969-12-31T23:59:59.500+00:00");
        assert_eq!(rfc3339(Timestamp::from_millisecond(1_700_000_000_120).unwrap()), "2023-11-14T22:13:20.120+00:00");
    }

    #[test]
    fn read_with_any_offset() {
        let t = at("2024-01-01T00:00:00Z");
        for s in [
            "2024-01-01T00:00:00+00:00",
            "2024-01-01T05:30:00+05:30",
            "2023-12-31T19:00:00\u{2212}05:00",
            "2024-01-01 00:00:00Z",
            "2024-01-01t00:00:00z",
        ] {
            assert_eq!(at(s), t, "{s}");
        }
        assert_eq!(at("2024-01-01T00:00:00.1234567891234+00:00"), at("2024-01-01T00:00:00.123456789Z"));
        assert_eq!(at("9999-12-31T23:59:59Z"), Timestamp::MAX);
        assert_eq!(at("9999-12-31T20:00:00-05:00"), Timestamp::MAX);
        assert_eq!(at("9999-12-30T22:00:01Z"), Timestamp::MAX);
        assert_eq!(at("9999-12-30T22:00:00Z").as_second(), Timestamp::MAX.as_second());
        for bad in
            ["2024-01-01", "2024-01-01T00:00:00", "soon", "2024\u{2212}01-01T00:00:00Z", "9999-12-31T23:59:59", ""]
        {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn days_either_way_up_to_the_last_instant() {
        let t = at("2024-01-01T00:00:00Z");
        assert_eq!(days_after(t, 180), at("2024-06-29T00:00:00Z"));
        assert_eq!(days_after(t, -1), at("2023-12-31T00:00:00Z"));
        assert_eq!(days_after(t, 10_000_000), Timestamp::MAX);
        assert_eq!(days_after(t, i64::MAX), Timestamp::MAX);
        assert_eq!(days_after(t, -10_000_000), Timestamp::MIN);
        assert_eq!(days_after(t, i64::MIN), Timestamp::MIN);
    }
}
