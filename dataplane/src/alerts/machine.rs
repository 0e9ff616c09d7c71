//! The rule state machine, pure: given an alert's current phase, what one record says about the
//! rule's conditions and the record's time, the next phase and the transition to publish.
//!
//! Per rule and key an alert is inactive (no entry), `Pending` (`when` holds since `since`, not
//! yet for `for`) or `Firing`. Time is record time (the Kafka timestamp), never the wall clock,
//! so that processing the same records again gives the same transitions: what exactly-once
//! across a restart needs.
//!
//! | phase | record says | next | publishes |
//! |---|---|---|---|
//! | inactive | `when` | `Firing` if `for` is 0, else `Pending{since: t}` | `firing` if `for` is 0 |
//! | `Pending{since}` | `when`, `t - since >= for` | `Firing{since}` | `firing` |
//! | `Pending{since}` | `when`, earlier | unchanged | — |
//! | `Pending{since}` | not `when` | inactive | — |
//! | `Firing{since}` | `clearWhen` (default `!when`) | inactive | `resolved` |
//! | `Firing{since}` | not `clearWhen` | unchanged (deduplicated) | — |
//! | any | a condition could not be evaluated | unchanged | — |

use serde::{Deserialize, Serialize};

/// Where an alert of one rule and key stands; inactive alerts have no phase.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(tag = "phase", rename_all = "lowercase")]
pub enum Phase {
    /// `when` has held since `since` (Unix ms), not yet for the rule's `for`.
    Pending {
        /// Record time of the first record of the run where `when` held.
        since: i64,
    },
    /// The alert fires; `since` is when its `when` run began.
    Firing {
        /// Record time of the first record of the run where `when` held.
        since: i64,
    },
}

/// What one record says about a rule: each condition true, false, or undecidable (`None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observation {
    /// `when` on the record.
    pub when: Option<bool>,
    /// `clearWhen` on the record (already `!when` when the rule has none).
    pub clear: Option<bool>,
}

/// A transition to publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// The alert started firing; its `when` run began at `since`.
    Firing {
        /// Start of the `when` run, Unix ms.
        since: i64,
    },
    /// The alert resolved; it had fired since `since`.
    Resolved {
        /// Start of the `when` run that fired, Unix ms.
        since: i64,
    },
}

impl Transition {
    /// `firing` or `resolved`, as in the event's `state`.
    pub fn state(self) -> &'static str {
        match self {
            Self::Firing { .. } => "firing",
            Self::Resolved { .. } => "resolved",
        }
    }

    /// Start of the `when` run.
    pub fn since(self) -> i64 {
        match self {
            Self::Firing { since } | Self::Resolved { since } => since,
        }
    }
}

/// The outcome of one record for one rule and key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// The phase after the record (`None`: inactive).
    pub next: Option<Phase>,
    /// The transition to publish, if any.
    pub transition: Option<Transition>,
}

/// One record's effect on one alert. `hold_ms` is the rule's `for`, `at` the record time.
pub fn step(current: Option<Phase>, observed: Observation, hold_ms: i64, at: i64) -> Step {
    let unchanged = Step {
        next: current,
        transition: None,
    };
    match current {
        None => match observed.when {
            Some(true) if hold_ms <= 0 => Step {
                next: Some(Phase::Firing { since: at }),
                transition: Some(Transition::Firing { since: at }),
            },
            Some(true) => Step {
                next: Some(Phase::Pending { since: at }),
                transition: None,
            },
            Some(false) | None => unchanged,
        },
        Some(Phase::Pending { since }) => match observed.when {
            Some(true) if at.saturating_sub(since) >= hold_ms => Step {
                next: Some(Phase::Firing { since }),
                transition: Some(Transition::Firing { since }),
            },
            Some(true) | None => unchanged,
            Some(false) => Step {
                next: None,
                transition: None,
            },
        },
        Some(Phase::Firing { since }) => match observed.clear {
            Some(true) => Step {
                next: None,
                transition: Some(Transition::Resolved { since }),
            },
            Some(false) | None => unchanged,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YES: Observation = Observation {
        when: Some(true),
        clear: Some(false),
    };
    const NO: Observation = Observation {
        when: Some(false),
        clear: Some(true),
    };
    const UNKNOWN: Observation = Observation {
        when: None,
        clear: None,
    };

    /// Runs a sequence of `(time, observation)` through one alert, collecting transitions.
    fn run(hold: i64, records: &[(i64, Observation)]) -> (Option<Phase>, Vec<Transition>) {
        let mut phase = None;
        let mut out = Vec::new();
        for (at, observed) in records {
            let s = step(phase, *observed, hold, *at);
            phase = s.next;
            out.extend(s.transition);
        }
        (phase, out)
    }

    #[test]
    fn without_for_an_alert_fires_at_once_and_only_once() {
        let (phase, out) = run(0, &[(1, NO), (2, YES), (3, YES), (4, YES)]);
        assert_eq!(out, [Transition::Firing { since: 2 }]);
        assert_eq!(phase, Some(Phase::Firing { since: 2 }));
    }

    #[test]
    fn an_alert_fires_when_its_condition_held_for_for() {
        let (_, out) = run(10, &[(0, YES), (5, YES), (9, YES)]);
        assert!(out.is_empty(), "held 9 of 10: {out:?}");
        let (phase, out) = run(10, &[(0, YES), (5, YES), (10, YES), (11, YES)]);
        assert_eq!(out, [Transition::Firing { since: 0 }]);
        assert_eq!(phase, Some(Phase::Firing { since: 0 }));
    }

    #[test]
    fn a_break_in_the_run_restarts_the_for_clock() {
        let (phase, out) = run(10, &[(0, YES), (5, NO), (6, YES), (12, YES)]);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(phase, Some(Phase::Pending { since: 6 }));
        let (_, out) = run(10, &[(0, YES), (5, NO), (6, YES), (16, YES)]);
        assert_eq!(out, [Transition::Firing { since: 6 }]);
    }

    #[test]
    fn a_firing_alert_resolves_once_when_cleared() {
        let (phase, out) = run(0, &[(1, YES), (2, NO), (3, NO), (4, YES), (5, NO)]);
        assert_eq!(
            out,
            [
                Transition::Firing { since: 1 },
                Transition::Resolved { since: 1 },
                Transition::Firing { since: 4 },
                Transition::Resolved { since: 4 },
            ]
        );
        assert_eq!(phase, None);
    }

    #[test]
    fn clear_when_gives_hysteresis() {
        // when cpu > 90, clearWhen cpu < 80: 85 neither fires nor clears.
        let between = Observation {
            when: Some(false),
            clear: Some(false),
        };
        let (phase, out) = run(0, &[(1, YES), (2, between), (3, between)]);
        assert_eq!(out, [Transition::Firing { since: 1 }]);
        assert_eq!(phase, Some(Phase::Firing { since: 1 }));
        let (_, out) = run(0, &[(1, YES), (2, between), (3, NO)]);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn an_undecidable_record_changes_nothing() {
        for phase in [
            None,
            Some(Phase::Pending { since: 1 }),
            Some(Phase::Firing { since: 1 }),
        ] {
            assert_eq!(
                step(phase, UNKNOWN, 10, 100),
                Step {
                    next: phase,
                    transition: None
                }
            );
        }
    }

    #[test]
    fn a_record_older_than_the_run_does_not_fire_it() {
        let (_, out) = run(10, &[(100, YES), (50, YES)]);
        assert!(out.is_empty());
    }

    #[test]
    fn phases_serialise_as_the_state_topic_stores_them() {
        let text = serde_json::to_string(&Phase::Pending { since: 5 }).unwrap_or_default();
        assert_eq!(text, r#"{"phase":"pending","since":5}"#);
        let back: Phase = serde_json::from_str(r#"{"phase":"firing","since":7}"#)
            .unwrap_or(Phase::Pending { since: 0 });
        assert_eq!(back, Phase::Firing { since: 7 });
    }
}
