//! The trajectory ledger: what became of every group each actor pushed.
//!
//! An actor numbers its groups 1, 2, 3, ... and pushes them in order; it resends the ones
//! not acknowledged after a reconnect. For each actor the ledger keeps `through`, the highest
//! sequence number it has accounted for, and a count per state, so that every group numbered
//! `1..=through` is in exactly one of them:
//!
//! - **queued**: accepted and waiting for (or inside) a step;
//! - **trained**: part of a completed step;
//! - **stale**: dropped because its policy version was too old, at intake or when a step took it;
//! - **invalid**: refused as malformed;
//! - **lost**: accepted by a learner that died before the checkpoint that would have kept it.
//!
//! The ledger is saved with every checkpoint. A learner that resumes from one turns the groups
//! that were queued then into lost ones (the queue died with the process), and when an actor's
//! next group comes in above `through + 1`, the groups in between were decided by the learner
//! that died after its checkpoint: they are counted lost too. So a learner's death loses groups,
//! but never loses count of them. A group at or below `through` is a duplicate and is not
//! counted again.
//!
//! Such a gap can only open on an actor's first group to this learner process (the actor
//! resends from its first unacknowledged group, in order); a later one, or one of more than
//! [`MAX_GAP`] groups, is refused as out of order and not counted, so a confused or hostile
//! client cannot write off groups that were never pushed.
//!
//! This is plain state; `runtime.rs` holds it behind a lock and the checkpoint stores it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The most actors the ledger keeps an account for; a group from one more is refused.
pub const MAX_ACTORS: usize = 65_536;

/// The most groups one gap may count lost: far more than a learner decides between two
/// checkpoints.
pub const MAX_GAP: u64 = 1 << 20;

/// One actor's account.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Every group numbered `1..=through` is counted in exactly one state below.
    pub through: u64,
    /// Accepted, not yet trained.
    pub queued: u64,
    /// Part of a completed step.
    pub trained: u64,
    /// Dropped as too old a policy.
    pub stale: u64,
    /// Refused as malformed.
    pub invalid: u64,
    /// Accepted or decided by a learner that died before its checkpoint.
    pub lost: u64,
    /// Resends refused as already counted (not a state: each was counted once before).
    pub duplicates: u64,
}

impl Account {
    /// The groups counted in a state; equals `through` (see [`Ledger::check`]).
    pub fn counted(&self) -> u64 {
        self.queued + self.trained + self.stale + self.invalid + self.lost
    }

    fn add(&mut self, other: &Account) {
        self.through += other.through;
        self.queued += other.queued;
        self.trained += other.trained;
        self.stale += other.stale;
        self.invalid += other.invalid;
        self.lost += other.lost;
        self.duplicates += other.duplicates;
    }
}

/// Where a pushed group goes at intake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intake {
    /// Into the training queue.
    Queued,
    /// Dropped: too old a policy.
    Stale,
    /// Refused: malformed.
    Invalid,
}

/// What [`Ledger::record`] did with a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Counted in its state. `lost` groups below it were counted lost first (see the module
    /// doc); their numbers are `first_lost..sequence`.
    New {
        /// Groups skipped over and counted lost.
        lost: u64,
    },
    /// Already counted: not counted again.
    Duplicate,
    /// From an actor the ledger has no room for ([`MAX_ACTORS`]): refused, not counted.
    Full,
    /// Skips ahead where no gap can be (see the module doc): refused, not counted.
    OutOfOrder {
        /// The sequence number the ledger expects next from that actor.
        expected: u64,
    },
}

/// Every actor's account, by actor id.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Ledger {
    accounts: BTreeMap<String, Account>,
    /// Actors heard from by this process (not saved: a resumed learner hears them anew).
    #[serde(skip)]
    heard: BTreeSet<String>,
}

/// Ledgers are equal when their accounts are.
impl PartialEq for Ledger {
    fn eq(&self, other: &Self) -> bool {
        self.accounts == other.accounts
    }
}

impl Ledger {
    /// Whether group `sequence` of `actor` is new here (not yet counted).
    pub fn is_new(&self, actor: &str, sequence: u64) -> bool {
        sequence > self.accounts.get(actor).map_or(0, |a| a.through)
    }

    /// Counts group `sequence` of `actor` in state `intake`, unless it was counted before.
    /// Sequence number 0 is not a group's (they start at 1): callers refuse it before.
    pub fn record(&mut self, actor: &str, sequence: u64, intake: Intake) -> Recorded {
        if !self.accounts.contains_key(actor) && self.accounts.len() >= MAX_ACTORS {
            return Recorded::Full;
        }
        let first_heard = self.heard.insert(actor.to_owned());
        let account = self.accounts.entry(actor.to_owned()).or_default();
        if sequence <= account.through {
            account.duplicates += 1;
            return Recorded::Duplicate;
        }
        let lost = sequence - account.through - 1;
        if lost > 0 && (!first_heard || lost > MAX_GAP) {
            let expected = account.through + 1;
            if first_heard {
                self.heard.remove(actor);
            }
            if expected == 1 {
                self.accounts.remove(actor); // nothing of it was counted: store nothing
            }
            return Recorded::OutOfOrder { expected };
        }
        account.lost += lost;
        account.through = sequence;
        match intake {
            Intake::Queued => account.queued += 1,
            Intake::Stale => account.stale += 1,
            Intake::Invalid => account.invalid += 1,
        }
        Recorded::New { lost }
    }

    /// A queued group of `actor` was taken by a step and dropped as stale there.
    pub fn dropped_stale(&mut self, actor: &str) {
        self.move_queued(actor, |a| &mut a.stale);
    }

    /// A queued group of `actor` is part of a completed step.
    pub fn trained(&mut self, actor: &str) {
        self.move_queued(actor, |a| &mut a.trained);
    }

    fn move_queued(&mut self, actor: &str, to: impl FnOnce(&mut Account) -> &mut u64) {
        if let Some(account) = self.accounts.get_mut(actor)
            && account.queued > 0
        {
            account.queued -= 1;
            *to(account) += 1;
        }
    }

    /// The ledger a checkpoint saved, as a learner resuming from it takes it over: the groups
    /// queued then died with the process that held them, so they count as lost.
    pub fn resumed(saved: Ledger) -> Ledger {
        let mut ledger = Ledger { heard: BTreeSet::new(), ..saved };
        for account in ledger.accounts.values_mut() {
            account.lost += account.queued;
            account.queued = 0;
        }
        ledger
    }

    /// Every account, by actor id.
    pub fn accounts(&self) -> &BTreeMap<String, Account> {
        &self.accounts
    }

    /// The sum over every actor (`through` is then the number of groups accounted for).
    pub fn totals(&self) -> Account {
        let mut total = Account::default();
        for account in self.accounts.values() {
            total.add(account);
        }
        total
    }

    /// The ledger's invariant: each actor's states add up to its `through`. Names the first
    /// actor whose do not.
    pub fn check(&self) -> Result<(), String> {
        for (actor, a) in &self.accounts {
            if a.counted() != a.through {
                return Err(format!(
                    "actor {actor}: groups 1..={} but {} counted ({a:?})",
                    a.through,
                    a.counted()
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A brute-force model: the state of every group number, one entry each.
    #[derive(Default)]
    struct PerGroup(BTreeMap<(String, u64), &'static str>);

    #[test]
    fn every_group_is_counted_once_in_order_out_of_order_and_resent() {
        let mut ledger = Ledger::default();
        assert_eq!(ledger.record("a", 1, Intake::Queued), Recorded::New { lost: 0 });
        assert_eq!(ledger.record("a", 2, Intake::Stale), Recorded::New { lost: 0 });
        assert_eq!(ledger.record("b", 1, Intake::Invalid), Recorded::New { lost: 0 });
        // A resend of an acknowledged group.
        assert_eq!(ledger.record("a", 2, Intake::Queued), Recorded::Duplicate);
        assert!(!ledger.is_new("a", 1));
        assert!(ledger.is_new("a", 3));
        ledger.trained("a");
        let a = ledger.accounts()["a"];
        assert_eq!((a.through, a.queued, a.trained, a.stale, a.duplicates), (2, 0, 1, 1, 1));
        assert_eq!(ledger.totals().through, 3);
        ledger.check().expect("balanced");
    }

    #[test]
    fn a_learner_that_resumes_counts_the_queue_and_the_gap_as_lost() {
        let mut before = Ledger::default();
        for seq in 1..=5 {
            before.record("a", seq, Intake::Queued);
        }
        before.trained("a");
        before.trained("a");
        // The checkpoint: 2 trained, 3 queued.
        let saved = before.clone();
        // The dead learner went on to account for 6..=9; the actor's next resend is 10.
        let mut after = Ledger::resumed(saved);
        assert_eq!(after.accounts()["a"].lost, 3);
        // The actor's first group to the new learner opens the gap; a later skip is refused.
        assert_eq!(after.record("a", 10, Intake::Queued), Recorded::New { lost: 4 });
        assert_eq!(after.record("a", 4, Intake::Queued), Recorded::Duplicate);
        assert_eq!(after.record("a", 13, Intake::Queued), Recorded::OutOfOrder { expected: 11 });
        let a = after.accounts()["a"];
        assert_eq!((a.through, a.trained, a.lost, a.queued), (10, 2, 7, 1));
        after.check().expect("balanced");
    }

    #[test]
    fn the_ledger_survives_a_checkpoint_as_json() {
        let mut ledger = Ledger::default();
        ledger.record("actor-0", 1, Intake::Queued);
        ledger.record("actor-0", 2, Intake::Invalid);
        let text = serde_json::to_string(&ledger).expect("json");
        assert!(text.starts_with("{\"actor-0\":"), "{text}");
        assert_eq!(
            serde_json::from_str::<Ledger>(&text).expect("parses").accounts(),
            ledger.accounts()
        );
    }

    /// Random pushes, resends, steps and learner deaths, checked against the per-group model:
    /// the ledger's counts are the model's, state by state.
    #[test]
    fn random_histories_match_a_per_group_model() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for _history in 0..200 {
            let mut ledger = Ledger::default();
            let mut model = PerGroup::default();
            let mut queue: Vec<(String, u64)> = Vec::new();
            // The checkpoint: the ledger and the model as they were.
            let mut saved = (Ledger::default(), PerGroup::default());
            let mut produced: BTreeMap<String, u64> = BTreeMap::new();
            let mut acked: BTreeMap<String, u64> = BTreeMap::new();
            let mut heard: BTreeSet<String> = BTreeSet::new();
            for _event in 0..60 {
                match next(10) {
                    0..=5 => {
                        // An actor pushes its first unacknowledged group, or a new one.
                        let actor = ["a", "b", "c"][next(3) as usize].to_owned();
                        let first = acked.get(&actor).copied().unwrap_or(0) + 1;
                        let made = produced.entry(actor.clone()).or_insert(0);
                        // A resend (at or below what was made) or the next new group.
                        let seq = first + next((*made + 2).saturating_sub(first).max(1));
                        *made = (*made).max(seq);
                        let intake =
                            [Intake::Queued, Intake::Queued, Intake::Stale, Intake::Invalid]
                                [next(4) as usize];
                        let key = (actor.clone(), seq);
                        // The model's own gap: numbers below `seq` it holds no state for.
                        let missing: Vec<u64> = (1..seq)
                            .filter(|g| !model.0.contains_key(&(actor.clone(), *g)))
                            .collect();
                        let first_heard = heard.insert(actor.clone());
                        let recorded = ledger.record(&actor, seq, intake);
                        if let Recorded::OutOfOrder { expected } = recorded {
                            // Refused: a gap after the actor's first group to this process.
                            assert!(!missing.is_empty() && !first_heard, "{actor} {seq}");
                            assert_eq!(expected, missing[0]);
                        }
                        if let Recorded::New { lost } = recorded {
                            assert!(missing.is_empty() || first_heard, "{actor} {seq}");
                            assert_eq!(missing.len() as u64, lost, "{actor} {seq}");
                            for gap in missing {
                                model.0.insert((actor.clone(), gap), "lost");
                            }
                            assert!(!model.0.contains_key(&key));
                            let state = match intake {
                                Intake::Queued => {
                                    queue.push(key.clone());
                                    "queued"
                                }
                                Intake::Stale => "stale",
                                Intake::Invalid => "invalid",
                            };
                            model.0.insert(key, state);
                        }
                        // Sometimes the acknowledgement arrives.
                        if next(2) == 0 {
                            let a = acked.entry(actor).or_insert(0);
                            *a = (*a).max(seq);
                        }
                    }
                    6 | 7 => {
                        // A step takes the oldest queued group.
                        if !queue.is_empty() {
                            let (actor, seq) = queue.remove(0);
                            let stale = next(4) == 0;
                            if stale {
                                ledger.dropped_stale(&actor);
                            } else {
                                ledger.trained(&actor);
                            }
                            model.0.insert((actor, seq), if stale { "stale" } else { "trained" });
                        }
                    }
                    8 => saved = (ledger.clone(), PerGroup(model.0.clone())),
                    _ => {
                        // The learner dies and resumes from the checkpoint; the actors resend
                        // from their first unacknowledged group.
                        ledger = Ledger::resumed(saved.0.clone());
                        model = PerGroup(saved.1.0.clone());
                        for state in model.0.values_mut() {
                            if *state == "queued" {
                                *state = "lost";
                            }
                        }
                        // What the dead learner acknowledged stays acknowledged.
                        queue.clear();
                        heard.clear();
                    }
                }
                ledger.check().expect("balanced");
                for (actor, account) in ledger.accounts() {
                    let count = |state: &str| {
                        model.0.iter().filter(|((a, _), s)| a == actor && **s == state).count()
                            as u64
                    };
                    assert_eq!(account.queued, count("queued"), "{actor}");
                    assert_eq!(account.trained, count("trained"), "{actor}");
                    assert_eq!(account.stale, count("stale"), "{actor}");
                    assert_eq!(account.invalid, count("invalid"), "{actor}");
                    assert_eq!(account.lost, count("lost"), "{actor}");
                    let numbers: Vec<u64> =
                        model.0.keys().filter(|(a, _)| a == actor).map(|(_, s)| *s).collect();
                    assert_eq!(numbers, (1..=account.through).collect::<Vec<_>>(), "{actor}");
                }
            }
        }
    }
}
