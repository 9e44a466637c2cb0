//! Fault injection, off by default: kill a worker, crash an actor, lose a stored
//! object — with a probability or at every n-th chance — so tests and users can
//! watch retries, restarts and reconstruction happen.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

/// When a fault fires.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub enum Trigger {
    /// Never (the default).
    #[default]
    Never,
    /// At the n-th chance, the 2n-th, and so on (n ≥ 1).
    EveryNth(u64),
    /// At each chance with probability `p`, from a seeded generator.
    Probability {
        /// The probability, 0 to 1.
        p: f64,
        /// The generator's seed, so a run can be repeated.
        seed: u64,
    },
}

/// Where, in a task's run, an injected worker death strikes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum FaultPoint {
    /// Before the function runs.
    #[default]
    BeforeRun,
    /// After it ran, before its result is reported: the result is lost.
    AfterRun,
}

/// Which faults to inject.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Faults {
    /// Kill the worker running a task (a system failure: the task is retried
    /// within its `max_retries`).
    pub kill_worker: Trigger,
    /// Where the worker dies.
    pub kill_worker_at: FaultPoint,
    /// Crash an actor just before it handles a call (restarted within its
    /// `max_restarts`; the call retried within its `max_task_retries`).
    pub crash_actor: Trigger,
    /// Lose an object as it lands in the object store (values over the inline
    /// threshold), as if its node died: rebuilt from lineage when read.
    pub drop_object: Trigger,
}

/// The faults of one node, with their counters.
#[derive(Debug, Default)]
pub struct FaultInjector {
    faults: Faults,
    chances: [AtomicU64; 3],
    rng: [AtomicU64; 3],
}

/// The kinds of chance a fault gets.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Chance {
    KillWorker = 0,
    CrashActor = 1,
    DropObject = 2,
}

impl FaultInjector {
    /// An injector for `faults`.
    pub fn new(faults: Faults) -> Self {
        let seed = |t: Trigger| match t {
            Trigger::Probability { seed, .. } => seed | 1,
            _ => 1,
        };
        FaultInjector {
            faults,
            chances: Default::default(),
            rng: [
                AtomicU64::new(seed(faults.kill_worker)),
                AtomicU64::new(seed(faults.crash_actor)),
                AtomicU64::new(seed(faults.drop_object)),
            ],
        }
    }

    /// The configured faults.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Whether the fault fires at this chance.
    pub(crate) fn fires(&self, chance: Chance) -> bool {
        let trigger = match chance {
            Chance::KillWorker => self.faults.kill_worker,
            Chance::CrashActor => self.faults.crash_actor,
            Chance::DropObject => self.faults.drop_object,
        };
        let i = chance as usize;
        match trigger {
            Trigger::Never => false,
            Trigger::EveryNth(n) => {
                (self.chances[i].fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(n.max(1))
            }
            Trigger::Probability { p, .. } => {
                // xorshift64*, advanced atomically: each chance gets its own draw.
                let step = |mut x: u64| {
                    x ^= x >> 12;
                    x ^= x << 25;
                    x ^= x >> 27;
                    x
                };
                let prev = self.rng[i]
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| Some(step(x)))
                    .unwrap_or(1);
                let draw = step(prev).wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
                (draw as f64 / (1u64 << 53) as f64) < p
            }
        }
    }
}
