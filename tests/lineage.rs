//! Lost objects rebuilt from lineage.

mod common;

use common::failing::*;
use common::{eventually, gate, open, LONG};
use rayx::prelude::*;
use rayx::{Faults, Trigger};

/// A runtime that keeps lineage (the drop_object fault is on, but never fires
/// unless asked) and stores values over 1 KiB in the object store.
fn lineage_rt(drop_object: Trigger) -> Runtime {
    rayx::Builder::new()
        .num_workers(2)
        .inline_threshold(1024)
        .faults(Faults {
            drop_object,
            ..Faults::default()
        })
        .start()
        .unwrap()
}

#[test]
fn a_lost_object_is_rebuilt_by_running_its_task_again() {
    let rt = lineage_rt(Trigger::EveryNth(u64::MAX));
    let k = key();
    let r = rt.task(big).remote((k, 7));
    assert_eq!(r.get().unwrap(), vec![7; 4096]);
    assert!(rt.memory().lineage_bytes > 0);
    assert!(rt.lose_object(&r));
    assert_eq!(rt.memory().store_bytes, 0, "the value is gone");
    assert_eq!(r.get().unwrap(), vec![7; 4096], "rebuilt");
    assert_eq!(ATTEMPTS.lock()[&k], 2, "by running its task a second time");
    drop(r);
    assert!(eventually(LONG, || rt.memory()
        == rayx::MemoryUsage {
            store_capacity: rt.memory().store_capacity,
            ..Default::default()
        }));
}

#[test]
fn rebuilding_reaches_lost_arguments_too() {
    let rt = lineage_rt(Trigger::EveryNth(u64::MAX));
    let (ka, kb) = (key(), key());
    let a = rt.task(big).remote((ka, 1));
    let b = rt.task(big).remote((kb, 2));
    let sum = rt.task(sum_of).remote((key(), &a));
    assert_eq!(sum.get().unwrap(), 4096);
    // Lose `a`; a new task that needs it waits while it is rebuilt.
    assert!(rt.lose_object(&a));
    assert_eq!(rt.task(sum_of).remote((key(), &a)).get().unwrap(), 4096);
    assert_eq!(ATTEMPTS.lock()[&ka], 2);
    // Lose `b` and the task built on it: reading that task's result runs it
    // again, and it first rebuilds `b`, its lost argument.
    let kh = key();
    let head = rt.task(sum_of).remote((kh, &b));
    assert_eq!(head.get().unwrap(), 2 * 4096);
    assert!(rt.lose_object(&b));
    assert!(rt.lose_object(&head));
    drop(b);
    assert_eq!(head.get().unwrap(), 2 * 4096);
    let runs = ATTEMPTS.lock();
    assert_eq!((runs[&kb], runs[&kh]), (2, 2));
}

/// An argument lost after its task was dispatched (queued behind busy
/// workers) is rebuilt before the task runs, as Ray reconstructs a task's
/// lost arguments (found by a helper: the task failed `ObjectLost`).
#[test]
fn an_argument_lost_while_its_task_is_queued_is_rebuilt_first() {
    let rt = lineage_rt(Trigger::EveryNth(u64::MAX));
    let ka = key();
    let arg = rt.task(big).remote((ka, 5));
    arg.get().unwrap();
    let g = gate();
    let busy: Vec<u64> = (0..2).map(|_| key()).collect();
    let blockers: Vec<_> = busy
        .iter()
        .map(|&k| rt.task(stuck_on).remote((k, g)))
        .collect();
    assert!(
        eventually(LONG, || busy.iter().all(|&k| started(k))),
        "both workers are busy"
    );
    let kd = key();
    let sum = rt.task(sum_of).remote((kd, &arg));
    assert!(!started(kd), "queued behind the busy workers");
    assert!(rt.lose_object(&arg));
    open(g);
    assert_eq!(sum.get_timeout(LONG).unwrap(), 5 * 4096);
    assert_eq!(ATTEMPTS.lock()[&ka], 2, "the argument was rebuilt");
    for b in blockers {
        b.get_timeout(LONG).unwrap();
    }
}

#[test]
fn objects_lost_as_they_land_are_rebuilt_transparently() {
    let rt = lineage_rt(Trigger::EveryNth(3));
    let keys: Vec<u64> = (0..30).map(|_| key()).collect();
    let refs: Vec<_> = keys
        .iter()
        .map(|&k| rt.task(big).max_retries(Retries::Infinite).remote((k, 9)))
        .collect();
    for r in &refs {
        assert_eq!(r.get_timeout(LONG).unwrap(), vec![9; 4096]);
    }
    let reruns: u32 = keys.iter().map(|k| ATTEMPTS.lock()[k] - 1).sum();
    assert!(
        reruns >= 10,
        "about a third were lost and rebuilt: {reruns}"
    );
}

#[test]
fn a_lost_put_object_cannot_be_rebuilt() {
    let rt = lineage_rt(Trigger::EveryNth(u64::MAX));
    let r = rt.put(vec![5u8; 4096]).unwrap();
    assert!(rt.lose_object(&r));
    match r.get() {
        Err(Error::ObjectLost { id }) => assert_eq!(id, r.id().to_string()),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn rebuilding_stays_within_max_retries_and_the_lineage_budget() {
    let rt = lineage_rt(Trigger::EveryNth(u64::MAX));
    let r = rt.task(big).max_retries(1).remote((key(), 1));
    r.get().unwrap();
    assert!(rt.lose_object(&r));
    r.get().unwrap();
    assert!(rt.lose_object(&r));
    match r.get() {
        Err(Error::ObjectReconstructionFailed { cause, .. }) => {
            assert!(cause.contains("max_retries"), "{cause}")
        }
        other => panic!("unexpected {other:?}"),
    }

    let tight = rayx::Builder::new()
        .inline_threshold(1024)
        .max_lineage_bytes(10)
        .faults(Faults {
            drop_object: Trigger::EveryNth(u64::MAX),
            ..Faults::default()
        })
        .start()
        .unwrap();
    let r = tight.task(big).remote((key(), 1));
    r.get().unwrap();
    assert!(tight.lose_object(&r));
    match r.get() {
        Err(Error::ObjectReconstructionFailed { cause, .. }) => {
            assert!(cause.contains("max_lineage_bytes"), "{cause}")
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// Lineage is kept on a plain runtime (no fault configured), and an argument
/// nobody else holds is freed while its lineage lives on: a lost result is
/// rebuilt by rebuilding that argument first (Ray's lineage pinning).
#[test]
fn lineage_is_kept_by_default_and_keeps_arguments_lineage_not_their_values() {
    let rt = rayx::Builder::new()
        .num_workers(2)
        .inline_threshold(1024)
        .start()
        .unwrap();
    let (ka, kh) = (key(), key());
    let arg = rt.task(big).remote((ka, 3));
    let head = rt.task(sum_of).remote((kh, &arg));
    assert_eq!(head.get().unwrap(), 3 * 4096);
    assert!(
        rt.memory().lineage_bytes > 0,
        "kept without a fault configured"
    );
    assert_eq!(
        rt.memory().store_bytes,
        4096,
        "the argument is in the store"
    );
    drop(arg);
    assert_eq!(
        rt.memory().store_bytes,
        0,
        "the argument's value is freed with its last ref"
    );
    assert!(rt.lose_object(&head));
    assert_eq!(head.get().unwrap(), 3 * 4096, "rebuilt");
    assert_eq!(ATTEMPTS.lock()[&ka], 2, "the argument was rebuilt first");
    assert_eq!(ATTEMPTS.lock()[&kh], 2);
    drop(head);
    assert!(eventually(LONG, || rt.memory().objects == 0
        && rt.memory().lineage_bytes == 0
        && rt.memory().store_bytes == 0));
}

/// A task that may not be retried keeps no lineage: a lost result of it
/// cannot be rebuilt, and says why.
#[test]
fn a_task_with_max_retries_zero_keeps_no_lineage() {
    let rt = rayx::Builder::new().num_workers(2).start().unwrap();
    let r = rt.task(big).max_retries(0).remote((key(), 1));
    r.get().unwrap();
    assert_eq!(rt.memory().lineage_bytes, 0);
    assert!(rt.lose_object(&r));
    match r.get() {
        Err(Error::ObjectReconstructionFailed { cause, .. }) => {
            assert!(cause.contains("max_retries"), "{cause}")
        }
        other => panic!("unexpected {other:?}"),
    }
}

fn step(x: u64) -> u64 {
    x + 1
}
rayx::remote!(step);

/// A chain of 20,000 tasks, each the argument of the next: freeing it and
/// rebuilding its end both go in loops, not in recursions as deep as the chain
/// (which overflowed the stack), and the lineage budget counts the whole chain.
#[test]
fn a_long_lineage_chain_frees_and_rebuilds_without_deep_recursion() {
    let rt = rayx::Builder::new().num_workers(2).start().unwrap();
    let n = 20_000u64;
    let mut r = rt.task(step).remote(0u64);
    for _ in 1..n {
        r = rt.task(step).remote(&r);
    }
    assert_eq!(r.get_timeout(LONG), Ok(n));
    assert!(
        rt.memory().lineage_bytes >= 64 * n,
        "every kept task is counted: {:?}",
        rt.memory()
    );
    assert!(rt.lose_object(&r));
    // Every link was freed (only `r` is held): all are rebuilt, in a loop.
    assert_eq!(r.get_timeout(LONG), Ok(n));
    drop(r);
    assert!(eventually(LONG, || {
        let m = rt.memory();
        m.objects == 0 && m.lineage_bytes == 0
    }));
}

/// A lost result whose argument was freed and had no lineage (`max_retries`
/// 0) says why it cannot be rebuilt.
#[test]
fn a_freed_argument_without_lineage_names_why_it_cannot_be_rebuilt() {
    let rt = rayx::Builder::new().num_workers(2).start().unwrap();
    let arg = rt.task(step).max_retries(0).remote(1u64);
    let head = rt.task(step).remote(&arg);
    assert_eq!(head.get_timeout(LONG), Ok(3));
    drop(arg);
    assert!(rt.lose_object(&head));
    match head.get_timeout(LONG) {
        Err(e) => assert!(
            matches!(e.root_cause(), Error::ObjectReconstructionFailed { cause, .. } if cause.contains("max_retries")),
            "{e:?}"
        ),
        other => panic!("unexpected {other:?}"),
    }
}

fn fail_at_start(g: u64) -> u64 {
    common::pass(g);
    panic!("the chain's first task fails")
}
rayx::remote!(fail_at_start);

/// A failure at the start of a 20,000-task chain reaches its end without a
/// recursion as deep as the chain.
#[test]
fn a_failure_cascades_down_a_long_chain_without_deep_recursion() {
    let rt = rayx::Builder::new().num_workers(2).start().unwrap();
    let g = common::gate();
    let mut r = rt.task(fail_at_start).remote(g);
    for _ in 1..20_000 {
        r = rt.task(step).remote(&r);
    }
    common::open(g);
    match r.get_timeout(LONG) {
        Err(e) => assert!(matches!(e.root_cause(), Error::TaskFailed { .. }), "{e:?}"),
        other => panic!("unexpected {other:?}"),
    }
}
