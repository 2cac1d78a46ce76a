//! A per-registry-host rate-limit gate, shared by every copy in the process.
//!
//! When a registry returns 429 (or 503 with `Retry-After`), the host's gate closes for the
//! time the registry requested, and every request to that host, from any copy, waits until it
//! opens. Without the shared gate, the other copies would keep the registry busy and each
//! would get its own 429.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// Maximum wait the engine accepts. A registry that requests more fails the copy, and the
/// caller retries later.
pub const MAX_WAIT: Duration = Duration::from_secs(300);

static GATES: LazyLock<Mutex<HashMap<String, Instant>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Closes the gate of `host` for `wait`, or keeps it closed longer if it already is.
pub fn close(host: &str, wait: Duration) {
    let until = Instant::now() + wait;
    let mut gates = GATES.lock().expect("gate lock poisoned");
    let entry = gates.entry(host.to_string()).or_insert(until);
    if *entry < until {
        *entry = until;
    }
}

/// Waits until the gate of `host` is open. Returns the time left, without waiting, when
/// that is more than [`MAX_WAIT`].
pub async fn wait(host: &str) -> Result<(), Duration> {
    loop {
        let until = {
            let mut gates = GATES.lock().expect("gate lock poisoned");
            match gates.get(host) {
                Some(until) if *until > Instant::now() => *until,
                Some(_) => {
                    gates.remove(host);
                    return Ok(());
                }
                None => return Ok(()),
            }
        };
        let left = until - Instant::now();
        if left > MAX_WAIT {
            return Err(left);
        }
        // Another 429 may move the gate while this task sleeps, so check again after.
        tokio::time::sleep_until(until).await;
    }
}

/// Parses a `Retry-After` value: a number of seconds or an HTTP date (RFC 9110 §10.2.3).
/// A date in the past means no wait.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = parse_http_date(value)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(at.saturating_sub(now)))
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Parses the three HTTP date formats (RFC 9110 §5.6.7) into seconds since the Unix epoch:
/// `Sun, 06 Nov 1994 08:49:37 GMT`, `Sunday, 06-Nov-94 08:49:37 GMT` and
/// `Sun Nov  6 08:49:37 1994`.
pub fn parse_http_date(text: &str) -> Option<u64> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let (day, month, year, time) = match words.as_slice() {
        // IMF-fixdate.
        [_, day, month, year, time, "GMT"] => (*day, *month, year.parse::<i64>().ok()?, *time),
        // RFC 850: two-digit years within 50 years of now; fixed to 19xx/20xx here.
        [_, date, time, "GMT"] => {
            let mut parts = date.split('-');
            let (day, month, year) = (parts.next()?, parts.next()?, parts.next()?);
            let year: i64 = year.parse().ok()?;
            let year = if year < 70 { 2000 + year } else { 1900 + year };
            (day, month, year, *time)
        }
        // asctime.
        [_, month, day, time, year] => (*day, *month, year.parse::<i64>().ok()?, *time),
        _ => return None,
    };
    let day: i64 = day.parse().ok()?;
    let month = MONTHS.iter().position(|m| *m == month)? as i64 + 1;
    let mut clock = time.split(':').map(|part| part.parse::<i64>().ok());
    let (hour, minute, second) = (clock.next()??, clock.next()??, clock.next()??);
    if !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second;
    u64::try_from(seconds).ok()
}

/// Returns the days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil` algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_date_formats_agree() {
        // 784111777 is 1994-11-06T08:49:37Z, the example date of RFC 9110.
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            parse_http_date("Sun Nov  6 08:49:37 1994"),
            Some(784_111_777)
        );
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2028 12:00:00 GMT"),
            Some(1_835_438_400)
        );
        assert_eq!(parse_http_date("yesterday"), None);
        assert_eq!(parse_http_date("Sun, 06 Foo 1994 08:49:37 GMT"), None);
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[tokio::test]
    async fn gate_delays_and_refuses_long_waits() {
        let host = "gate-test.invalid:1";
        close(host, Duration::from_millis(200));
        let started = Instant::now();
        wait(host).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(190));

        let far = "gate-test.invalid:2";
        close(far, MAX_WAIT + Duration::from_secs(60));
        assert!(wait(far).await.is_err());
    }
}
