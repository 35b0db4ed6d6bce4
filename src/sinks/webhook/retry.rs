//! A response → what to do next. Pure functions, tested on literal responses.
//!
//! Only a 2xx within the timeout is a delivery (a 3xx is a failure: a webhook URL that moved
//! is a configuration problem, and following it would send the body somewhere unconfigured).
//! 429 and 503 may say when to come back (`Retry-After`, seconds or an HTTP date); 410 Gone says
//! never. Every failure waits for the next step of the schedule, jittered so endpoints that
//! failed together do not all come back in the same second; a `Retry-After` can make that wait
//! longer, never shorter, and never longer than the schedule's longest step.

use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// 410: the receiver asks never to be called again.
    Gone,
    /// Try again later; `retry_after` when the receiver said when.
    Retry {
        retry_after: Option<Duration>,
    },
}

/// `status` is None when no response came (connection refused, timeout).
pub fn classify(status: Option<u16>, retry_after: Option<&str>, now: SystemTime) -> Verdict {
    match status {
        Some(200..=299) => Verdict::Delivered,
        Some(410) => Verdict::Gone,
        Some(429 | 503) => Verdict::Retry {
            retry_after: retry_after.and_then(|v| parse_retry_after(v, now)),
        },
        _ => Verdict::Retry { retry_after: None },
    }
}

/// `Retry-After: 120` or `Retry-After: Wed, 21 Oct 2015 07:28:00 GMT`; a date in the past is 0.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at: SystemTime = chrono::DateTime::parse_from_rfc2822(value).ok()?.into();
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The wait after the `failures`-th failed attempt of a batch (1 for the first failure), or
/// None when the schedule is exhausted. `jitter` scales the schedule's step (see [`jitter`]).
///
/// A receiver's `Retry-After` lengthens the wait but never shortens it: every attempt still
/// uses up a step, so a receiver answering `429 Retry-After: 1` would otherwise run through a
/// schedule meant to last two days in seconds and turn its batches into dead letters. It is
/// capped at the schedule's longest step, so a receiver cannot park a batch for longer than the
/// user configured any wait to be (nor make a deadline overflow the clock).
pub fn next_delay(
    schedule: &[Duration],
    failures: u32,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Option<Duration> {
    let step = schedule.get(failures.checked_sub(1)? as usize)?.mul_f64(jitter);
    let longest = schedule.iter().max().copied().unwrap_or_default();
    Some(step.max(retry_after.unwrap_or_default().min(longest)))
}

/// Like [`next_delay`], but past the end of the schedule its last step repeats: for
/// `on_exhausted = "block"`, which never gives up. An empty schedule retries every second.
pub fn next_delay_forever(
    schedule: &[Duration],
    failures: u32,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Duration {
    let schedule = if schedule.is_empty() {
        &[Duration::from_secs(1)][..]
    } else {
        schedule
    };
    let capped = failures.clamp(1, schedule.len() as u32);
    next_delay(schedule, capped, retry_after, jitter).expect("a step within a non-empty schedule")
}

/// When a retry waiting `delay` from `now` is due. Only an absurd configured step (millions of
/// years) could overflow the clock, `Retry-After` being capped; it waits a century instead of
/// panicking.
pub fn due(now: SystemTime, delay: Duration) -> SystemTime {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    now.checked_add(delay)
        .or_else(|| now.checked_add(CENTURY))
        .unwrap_or(now)
}

/// A factor in [0.8, 1.2).
pub fn jitter() -> f64 {
    rand::random_range(0.8..1.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        // Wed, 21 Oct 2015 07:28:00 GMT
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480)
    }

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn only_2xx_is_delivered() {
        assert_eq!(classify(Some(200), None, now()), Verdict::Delivered);
        assert_eq!(classify(Some(204), None, now()), Verdict::Delivered);
        let redirects = [Some(301), Some(302), Some(303), Some(307), Some(308)];
        for failure in redirects
            .into_iter()
            .chain([Some(400), Some(404), Some(500), Some(502), None])
        {
            assert_eq!(
                classify(failure, None, now()),
                Verdict::Retry { retry_after: None },
                "{failure:?}"
            );
        }
    }

    #[test]
    fn gone_disables() {
        assert_eq!(classify(Some(410), Some("5"), now()), Verdict::Gone);
    }

    #[test]
    fn too_many_requests_and_unavailable_honour_retry_after_in_seconds_or_as_a_date() {
        assert_eq!(
            classify(Some(429), Some("7"), now()),
            Verdict::Retry {
                retry_after: Some(s(7))
            }
        );
        assert_eq!(
            classify(Some(503), Some("Wed, 21 Oct 2015 07:28:30 GMT"), now()),
            Verdict::Retry {
                retry_after: Some(s(30))
            }
        );
        assert_eq!(
            classify(Some(429), Some("Wed, 21 Oct 2015 07:00:00 GMT"), now()),
            Verdict::Retry {
                retry_after: Some(s(0))
            }
        );
        assert_eq!(
            classify(Some(429), Some("soon"), now()),
            Verdict::Retry { retry_after: None }
        );
        assert_eq!(
            classify(Some(500), Some("7"), now()),
            Verdict::Retry { retry_after: None },
            "only 429 and 503 say when"
        );
    }

    #[test]
    fn the_schedule_is_followed_then_exhausted() {
        let schedule = [s(5), s(30), s(120)];
        assert_eq!(next_delay(&schedule, 1, None, 1.0), Some(s(5)));
        assert_eq!(next_delay(&schedule, 3, None, 1.0), Some(s(120)));
        assert_eq!(next_delay(&schedule, 4, None, 1.0), None);
        assert_eq!(next_delay(&[], 1, None, 1.0), None, "an empty schedule never retries");
    }

    #[test]
    fn jitter_scales_the_schedule_but_not_retry_after() {
        assert_eq!(next_delay(&[s(10)], 1, None, 0.8), Some(s(8)));
        assert_eq!(next_delay(&[s(10), s(60)], 1, Some(s(30)), 0.8), Some(s(30)));
        for _ in 0..1000 {
            let j = jitter();
            assert!((0.8..1.2).contains(&j));
        }
    }

    #[test]
    fn retry_after_lengthens_a_step_but_never_shortens_it() {
        let schedule = [s(5), s(30), s(120)];
        let retry_after = |value: &str| match classify(Some(429), Some(value), now()) {
            Verdict::Retry { retry_after } => retry_after,
            other => panic!("{other:?}"),
        };
        // `Retry-After: 1` does not run through the schedule: each step is waited in full.
        assert_eq!(next_delay(&schedule, 1, retry_after("1"), 1.0), Some(s(5)));
        assert_eq!(next_delay(&schedule, 3, retry_after("1"), 1.0), Some(s(120)));
        assert_eq!(next_delay(&schedule, 4, retry_after("1"), 1.0), None);
        // Longer than the step: the receiver's wait.
        assert_eq!(next_delay(&schedule, 1, retry_after("60"), 1.0), Some(s(60)));
        assert_eq!(
            next_delay(&schedule, 1, retry_after("Wed, 21 Oct 2015 07:29:00 GMT"), 1.0),
            Some(s(60))
        );
        // A date in the past, or no Retry-After: the step.
        assert_eq!(
            next_delay(&schedule, 2, retry_after("Wed, 21 Oct 2015 07:00:00 GMT"), 1.0),
            Some(s(30))
        );
        assert_eq!(next_delay(&schedule, 2, None, 1.0), Some(s(30)));
    }

    #[test]
    fn a_huge_retry_after_is_capped_at_the_longest_step_and_overflows_nothing() {
        let schedule = [s(5), s(30), s(120)];
        for huge in ["18446744073709551615", "86400000", "Fri, 31 Dec 9999 23:59:59 GMT"] {
            let Verdict::Retry { retry_after } = classify(Some(503), Some(huge), now()) else {
                panic!("503 is a retry");
            };
            assert!(retry_after.is_some(), "{huge} parses");
            assert_eq!(next_delay(&schedule, 1, retry_after, 1.0), Some(s(120)), "{huge}");
            assert_eq!(next_delay_forever(&schedule, 9, retry_after, 1.0), s(120), "{huge}");
            let delay = next_delay(&schedule, 1, retry_after, 1.0).unwrap();
            assert_eq!(due(now(), delay), now() + s(120));
        }
        assert_eq!(
            due(now(), Duration::MAX),
            now() + s(100 * 365 * 24 * 3600),
            "no panic even for a delay no clock holds"
        );
    }

    #[test]
    fn blocking_repeats_the_last_step() {
        let schedule = [s(1), s(4)];
        assert_eq!(next_delay_forever(&schedule, 1, None, 1.0), s(1));
        assert_eq!(next_delay_forever(&schedule, 2, None, 1.0), s(4));
        assert_eq!(next_delay_forever(&schedule, 50, None, 1.0), s(4));
        assert_eq!(next_delay_forever(&schedule, 1, Some(s(3)), 1.0), s(3));
        assert_eq!(next_delay_forever(&schedule, 50, Some(s(9)), 1.0), s(4), "capped");
        assert_eq!(next_delay_forever(&[], 3, None, 1.0), s(1));
        assert_eq!(next_delay_forever(&[], 3, Some(s(9)), 1.0), s(1));
    }
}
