//! Which orchestrator a service calls next, given how the last call went:
//! a pure function of the list's length, the index used and the outcome, so
//! the whole policy is one table (tests below).
//!
//! Invariant: a call moves to another orchestrator only on an outcome where
//! sending the request again elsewhere is safe: it never reached an
//! orchestrator's answer (refused, reset, timed out) or the orchestrator said
//! it cannot serve it now (503). Reads are always safe to resend; every write
//! the services send carries a request id, which the master dedupes
//! (docs/guarantees.md §1), so a resent write is applied once. Each
//! orchestrator is tried at most once per call, within the call's one
//! time budget (`timing::CLIENT_TIMEOUT`).

/// How one attempt on one orchestrator ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An answer other than 503 (success, or an error the orchestrator means).
    Answered,
    /// No connection, or the connection broke before a whole answer came.
    Unreachable,
    /// No answer within the time the call had left.
    TimedOut,
    /// The orchestrator answered 503: it cannot serve this now.
    Unavailable,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Answered => "answered",
            Outcome::Unreachable => "unreachable",
            Outcome::TimedOut => "timed out",
            Outcome::Unavailable => "answered 503",
        }
    }
}

/// The orchestrator (index into the list of `count`) that calls should use
/// after an attempt on `current` ended with `outcome`: the same one while it
/// answers, else the next one round the list.
pub fn next(current: usize, count: usize, outcome: Outcome) -> usize {
    if count == 0 {
        return 0;
    }
    match outcome {
        Outcome::Answered => current % count,
        Outcome::Unreachable | Outcome::TimedOut | Outcome::Unavailable => (current + 1) % count,
    }
}

/// Whether the call sends its request again (to [`next`]) after `tried`
/// attempts on distinct orchestrators out of `count`, the last ending with
/// `outcome`, while `time_left` says the call's budget is not spent.
pub fn retry(tried: usize, count: usize, outcome: Outcome, time_left: bool) -> bool {
    outcome != Outcome::Answered && tried < count && time_left
}

#[cfg(test)]
mod tests {
    use super::*;
    use Outcome::*;

    #[test]
    fn next_orchestrator_table() {
        // (current, count, outcome) -> next
        for (current, count, outcome, want) in [
            (0, 1, Answered, 0),
            (0, 1, Unreachable, 0),
            (0, 1, Unavailable, 0),
            (0, 2, Answered, 0),
            (1, 2, Answered, 1),
            (0, 2, Unreachable, 1),
            (0, 2, TimedOut, 1),
            (0, 2, Unavailable, 1),
            (1, 2, Unreachable, 0),
            (2, 3, Unavailable, 0),
            (1, 3, TimedOut, 2),
            (0, 0, Unreachable, 0),
        ] {
            assert_eq!(next(current, count, outcome), want, "{current} of {count}, {outcome:?}");
        }
    }

    #[test]
    fn retry_table() {
        // (tried, count, outcome, time left) -> send again
        for (tried, count, outcome, time_left, want) in [
            (1, 1, Unreachable, true, false),
            (1, 2, Answered, true, false),
            (1, 2, Unreachable, true, true),
            (1, 2, TimedOut, true, true),
            (1, 2, Unavailable, true, true),
            (1, 2, Unreachable, false, false),
            (2, 2, Unavailable, true, false),
            (2, 3, Unreachable, true, true),
            (3, 3, Unreachable, true, false),
        ] {
            assert_eq!(retry(tried, count, outcome, time_left), want, "{tried}/{count} {outcome:?} {time_left}");
        }
    }
}
