//! The durable exit record of a container's init: `BUNDLE/init.exit`, one
//! line `"<status> <unix seconds>.<nanoseconds>"`, written atomically and
//! synced before the exit is published. `shim delete` reads it, so the real
//! exit status survives a shim that was killed before containerd heard it.
//! Beside it, `BUNDLE/init.oom` records that the container's cgroup saw an
//! OOM kill, so `shim delete` can say so too.
//!
//! The Go shim of containerd 2.4 keeps the same fact in `BUNDLE/exit.json`
//! (go-runc's `Exit` as JSON: `{"Timestamp":"<RFC 3339>","Pid":N,"Status":N}`).
//! Wedge writes that file too and reads it when its own is missing, so that
//! on a node moving between the two shims either binary's `shim delete`
//! reports the real status of the other's container.

use std::io;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use crate::process::ExitInfo;

const FILE: &str = "init.exit";
const OOM: &str = "init.oom";

/// Records that the container was OOM-killed.
pub fn write_oom(bundle: &Path) -> io::Result<()> {
    crate::sys::nofile::with_spare(|| {
        crate::fsutil::write_atomic(&bundle.join(OOM), b"oom\n", 0o600)
    })
}

/// Whether an OOM kill of the container was recorded.
pub fn oom_recorded(bundle: &Path) -> bool {
    bundle.join(OOM).exists()
}

/// The Go shim's record (containerd 2.4).
const GO_FILE: &str = "exit.json";

/// Records the exit of init (`pid`) in `bundle`, in both formats.
pub fn write(bundle: &Path, pid: u32, exit: &ExitInfo) -> io::Result<()> {
    let d = exit.at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let line = format!("{} {}.{:09}\n", exit.status, d.as_secs(), d.subsec_nanos());
    let go = format!(
        r#"{{"Timestamp":"{}","Pid":{pid},"Status":{}}}"#,
        rfc3339(d),
        exit.status
    );
    // Never lost for want of an fd: the spare one is used if need be.
    crate::sys::nofile::with_spare(|| {
        crate::fsutil::write_atomic(&bundle.join(FILE), line.as_bytes(), 0o600)?;
        crate::fsutil::write_atomic(&bundle.join(GO_FILE), go.as_bytes(), 0o600)
    })
}

/// Reads the record, if the init process's exit was recorded (by Wedge, or
/// by the Go shim).
pub fn read(bundle: &Path) -> Option<ExitInfo> {
    read_own(bundle).or_else(|| read_go(bundle).map(|(_, e)| e))
}

fn read_own(bundle: &Path) -> Option<ExitInfo> {
    parse_own(&std::fs::read_to_string(bundle.join(FILE)).ok()?)
}

/// Parses Wedge's record (`"<status> <secs>.<nanos>"`).
pub fn parse_own(s: &str) -> Option<ExitInfo> {
    let mut f = s.split_whitespace();
    let status = f.next()?.parse().ok()?;
    let (secs, nanos) = f.next()?.split_once('.')?;
    let nanos = nanos.parse().ok().filter(|n| *n < 1_000_000_000)?;
    // A corrupt record is no record, never a panic.
    let at = UNIX_EPOCH.checked_add(Duration::new(secs.parse().ok()?, nanos))?;
    Some(ExitInfo { status, at })
}

/// The Go shim's `exit.json`: pid and exit, when valid as it checks them
/// (a pid, a time, a status ≥ 0).
pub fn read_go(bundle: &Path) -> Option<(u32, ExitInfo)> {
    parse_go(&std::fs::read_to_string(bundle.join(GO_FILE)).ok()?)
}

/// Parses the Go shim's `exit.json`.
pub fn parse_go(s: &str) -> Option<(u32, ExitInfo)> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct GoExit {
        timestamp: String,
        pid: i64,
        status: i64,
    }
    let e: GoExit = serde_json::from_str(s).ok()?;
    let at = parse_rfc3339(&e.timestamp)?;
    if e.pid <= 0 || e.status < 0 || at == UNIX_EPOCH {
        return None;
    }
    Some((
        u32::try_from(e.pid).ok()?,
        ExitInfo {
            status: u32::try_from(e.status).ok()?,
            at,
        },
    ))
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `d` after the epoch as RFC 3339 in UTC with nanoseconds, as Go writes a
/// `time.Time` in JSON.
fn rfc3339(d: Duration) -> String {
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // civil_from_days
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Parses RFC 3339 (`2026-12-03T15:02:36.5+01:00`, `…Z`).
fn parse_rfc3339(s: &str) -> Option<std::time::SystemTime> {
    let num = |a: usize, b: usize| s.get(a..b)?.parse::<i64>().ok();
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (y, mo, d, h, mi, sec) = (
        num(0, 4)?,
        num(5, 7)?,
        num(8, 10)?,
        num(11, 13)?,
        num(14, 16)?,
        num(17, 19)?,
    );
    let mut rest = s.get(19..)?;
    let mut nanos = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        let digits = &frac[..n];
        nanos = format!("{:0<9}", &digits[..n.min(9)]).parse().ok()?;
        rest = &frac[n..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 && o.is_ascii() && matches!(&o[..1], "+" | "-") && &o[3..4] == ":" => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            sign * (o[1..3].parse::<i64>().ok()? * 3600 + o[4..6].parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset;
    let secs = u64::try_from(secs).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read(d.path()), None);
        let e = ExitInfo {
            status: 7,
            at: UNIX_EPOCH + Duration::new(1_700_000_000, 5),
        };
        write(d.path(), 42, &e).unwrap();
        assert_eq!(read(d.path()), Some(e));
        assert_eq!(read_go(d.path()), Some((42, e)));
        std::fs::write(d.path().join(FILE), "garbage").unwrap();
        std::fs::remove_file(d.path().join(GO_FILE)).unwrap();
        assert_eq!(read(d.path()), None);
        assert!(!oom_recorded(d.path()));
        write_oom(d.path()).unwrap();
        assert!(oom_recorded(d.path()));
    }

    /// The Go shim's `exit.json` (containerd 2.4, go-runc's `Exit`), as
    /// written with a local time zone, read when Wedge's own record is
    /// missing; invalid ones (as the Go shim judges them) are ignored.
    #[test]
    fn reads_and_writes_the_go_shims_record() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join(GO_FILE),
            r#"{"Timestamp":"2026-12-03T16:02:36.5+01:00","Pid":4321,"Status":137}"#,
        )
        .unwrap();
        let at = UNIX_EPOCH + Duration::new(1_796_310_156, 500_000_000);
        assert_eq!(read(d.path()), Some(ExitInfo { status: 137, at }));
        assert_eq!(read_go(d.path()).map(|(p, _)| p), Some(4321));
        for bad in [
            r#"{"Timestamp":"0001-01-01T00:00:00Z","Pid":1,"Status":0}"#,
            r#"{"Timestamp":"2026-12-03T15:02:36Z","Pid":0,"Status":0}"#,
            r#"{"Timestamp":"2026-12-03T15:02:36Z","Pid":1,"Status":-1}"#,
            r#"{"Timestamp":"yesterday","Pid":1,"Status":0}"#,
        ] {
            std::fs::write(d.path().join(GO_FILE), bad).unwrap();
            assert_eq!(read(d.path()), None, "{bad}");
        }
        assert_eq!(
            rfc3339(Duration::new(1_796_310_156, 7)),
            "2026-12-03T15:02:36.000000007Z"
        );
        assert_eq!(rfc3339(Duration::ZERO), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            parse_rfc3339("2024-02-29T23:59:59.123456789Z"),
            Some(UNIX_EPOCH + Duration::new(1_709_251_199, 123_456_789))
        );
        assert_eq!(
            parse_rfc3339("2026-12-03T15:02:36Z"),
            Some(UNIX_EPOCH + Duration::new(1_796_310_156, 0))
        );
    }

    /// Found by the `exit_record` fuzz target: corrupt records read as no
    /// record, never as a panic (times past what SystemTime holds, nanos of
    /// a second or more, multibyte text where digits belong).
    #[test]
    fn corrupt_records_are_none() {
        assert_eq!(parse_own("137 10000000000000000017736.05"), None);
        assert_eq!(parse_own("137 18446744073709551615.999999999"), None);
        assert_eq!(parse_own("0 1.1000000000"), None);
        assert_eq!(parse_own("0 1764860000.123456789").unwrap().status, 0);
        for t in [
            "2026-12-03T15:02:3\u{e9}Z",
            "2026-12-03T15:02:36+\u{e9}01:",
            "2026-12-03T15:02:36+01\u{e9}:",
            "9999-12-31T23:59:59.999999999Z",
        ] {
            let json = format!(r#"{{"Timestamp":"{t}","Pid":1,"Status":0}}"#);
            let _ = parse_go(&json);
        }
        assert!(
            parse_go(r#"{"Timestamp":"2026-12-03T15:02:36.5+01:00","Pid":1,"Status":3}"#).is_some()
        );
    }
}
