//! Retrying, one way for the whole program: the one backoff every retry loop waits by, and the
//! one error type for what no retry can fix.
//!
//! Every stage retries what can heal (a server down, a connection cut, a 503) while the slot
//! holds the position, so nothing is lost; and ends the run with [`Unrecoverable`]'s message
//! when waiting cannot help (a wrong password, a missing publication, a mapping the index
//! refuses), because a daemon that retries those forever looks healthy and does nothing.

use std::time::Duration;

/// The longest any retry waits.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// An error no retry can fix: the run ends with its message, which says what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unrecoverable(pub String);

/// Whether `e`, or anything it was caused by, is [`Unrecoverable`].
pub fn is_unrecoverable(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| cause.is::<Unrecoverable>())
}

/// The wait before retry number `attempt` (0 first): `first` doubling up to [`MAX_WAIT`], plus
/// up to 20% jitter so that concurrent retries (requests in flight, several sinks) do not
/// return in step.
pub fn backoff(first: Duration, attempt: u32) -> Duration {
    let base = first.saturating_mul(1u32 << attempt.min(16)).min(MAX_WAIT);
    base + base.mul_f64(rand::random::<f64>() * 0.2)
}

/// A retry loop's [`backoff`] state: its attempts since the last success.
#[derive(Debug)]
pub struct Backoff {
    first: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(first: Duration) -> Backoff {
        Backoff { first, attempt: 0 }
    }

    /// The wait before the next attempt.
    pub fn next_wait(&mut self) -> Duration {
        let wait = backoff(self.first, self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        wait
    }

    /// It worked: the next failure waits `first` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_from_the_first_to_the_cap_with_some_jitter() {
        let second = Duration::from_secs(1);
        for (attempt, base) in [(0, 1), (1, 2), (2, 4), (4, 16), (5, 30), (40, 30)] {
            let wait = backoff(second, attempt);
            let base = Duration::from_secs(base);
            assert!(wait >= base && wait <= base.mul_f64(1.2), "attempt {attempt}: {wait:?}");
        }
        let first = backoff(Duration::from_millis(200), 0);
        assert!(first >= Duration::from_millis(200) && first <= Duration::from_millis(240));
    }

    #[test]
    fn a_success_starts_the_schedule_again() {
        let mut b = Backoff::new(Duration::from_secs(1));
        b.next_wait();
        b.next_wait();
        assert_eq!(b.failures(), 2);
        b.reset();
        assert!(b.next_wait() < Duration::from_millis(1200));
    }

    #[test]
    fn unrecoverable_is_found_anywhere_in_the_chain() {
        let e = anyhow::Error::new(Unrecoverable("no".into())).context("outer");
        assert!(is_unrecoverable(&e));
        assert!(!is_unrecoverable(&anyhow::anyhow!("something else")));
    }
}
