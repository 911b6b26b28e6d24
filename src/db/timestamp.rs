//! Timestamps in row JSON, rendered exactly as the capture trigger's `to_jsonb` renders a
//! `timestamptz` under UTC (`2026-11-23T16:50:17.45797+00:00`: microseconds without trailing
//! zeros, none at all on a whole second, and a `+00:00` offset), so that a REST body and an
//! event's `data` for the same row are identical. Use with `#[serde(with = "timestamp")]`.

use chrono::{DateTime, Utc};
use serde::Serializer;

pub fn render(t: &DateTime<Utc>) -> String {
    let mut s = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    // PostgreSQL keeps microseconds; anything finer cannot come from the database.
    let micros = t.timestamp_subsec_micros();
    if micros != 0 {
        s.push('.');
        s.push_str(format!("{micros:06}").trim_end_matches('0'));
    }
    s.push_str("+00:00");
    s
}

pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&render(t))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn renders_like_postgres_to_jsonb_under_utc() {
        let t = Utc.with_ymd_and_hms(2026, 11, 23, 16, 50, 17).unwrap();
        assert_eq!(render(&t), "2026-11-23T16:50:17+00:00");
        let t = t + chrono::Duration::microseconds(457_970);
        assert_eq!(render(&t), "2026-11-23T16:50:17.45797+00:00");
        let t = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap() + chrono::Duration::microseconds(1);
        assert_eq!(render(&t), "2026-01-02T03:04:05.000001+00:00");
    }
}
