//! Task retries: panics, worker deaths, retry budgets, chaos.

mod common;

use common::failing::*;
use common::{eventually, LONG};
use rayx::prelude::*;
use rayx::{FaultPoint, Faults, SupervisionEvent, Trigger};

#[test]
fn panics_are_not_retried_by_default() {
    let rt = rt2();
    let k = key();
    assert!(matches!(
        rt.task(flaky).remote((k, 1)).get(),
        Err(Error::TaskFailed { .. })
    ));
    assert_eq!(ATTEMPTS.lock()[&k], 1);
}

#[test]
fn retry_exceptions_retries_panics_within_max_retries() {
    let rt = rt2();
    let k = key();
    let r = rt.task(flaky).retry_exceptions(true).remote((k, 2));
    assert_eq!(
        r.get().unwrap(),
        3,
        "two failures, then the third attempt succeeds"
    );
}

#[test]
fn the_final_error_lists_every_attempt() {
    let rt = rt2();
    let k = key();
    let r = rt
        .task(flaky)
        .name("always")
        .retry_exceptions(true)
        .max_retries(2)
        .remote((k, 100));
    match r.get() {
        Err(Error::RetriesExhausted { task, attempts }) => {
            assert_eq!(task, "always");
            assert_eq!(attempts.len(), 3);
            for (i, a) in attempts.iter().enumerate() {
                assert!(a.contains(&format!("transient failure {}", i + 1)), "{a}");
            }
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn retry_exceptions_can_match_the_panic() {
    let rt = rt2();
    let k = key();
    let r = rt
        .task(flaky)
        .retry_exceptions_matching(["transient"])
        .remote((k, 1));
    assert_eq!(r.get().unwrap(), 2);
    let k = key();
    let r = rt
        .task(fatal)
        .retry_exceptions_matching(["transient"])
        .remote(k);
    assert!(matches!(r.get(), Err(Error::TaskFailed { .. })));
    assert_eq!(
        ATTEMPTS.lock()[&k],
        1,
        "a panic that does not match is not retried"
    );
}

#[test]
fn a_task_whose_worker_dies_runs_again() {
    let rt = with_faults(Faults {
        kill_worker: Trigger::EveryNth(2),
        ..Faults::default()
    });
    let events = rt.events();
    let refs: Vec<_> = (0..10)
        .map(|i| rt.task(double).max_retries(Retries::Infinite).remote(i))
        .collect();
    assert_eq!(
        rt.get(&refs, Some(LONG)).unwrap(),
        (0..10).map(|i| i * 2).collect::<Vec<_>>()
    );
    let mut failed = 0;
    let mut restarted = 0;
    while let Ok(e) = events.recv_timeout(LONG) {
        match e {
            SupervisionEvent::Failed { child, cause } if child.starts_with("worker-") => {
                assert!(cause.contains("injected fault"));
                failed += 1;
            }
            SupervisionEvent::Restarted { child, .. } if child.starts_with("worker-") => {
                restarted += 1
            }
            _ => {}
        }
        if failed >= 5 && restarted >= 5 {
            break;
        }
    }
    assert!(
        failed >= 5 && restarted >= 5,
        "failed {failed}, restarted {restarted}"
    );
    let (live, _) = rt.worker_counts();
    assert_eq!(live, 2, "every dead worker was replaced");
}

#[test]
fn a_lost_result_is_computed_again() {
    // The worker dies after running the task, before reporting: the result is lost.
    let rt = with_faults(Faults {
        kill_worker: Trigger::EveryNth(2),
        kill_worker_at: FaultPoint::AfterRun,
        ..Faults::default()
    });
    let k = key();
    let first = rt.task(flaky).remote((k, 0));
    let second = rt.task(flaky).remote((k, 0));
    let got = [first.get().unwrap(), second.get().unwrap()];
    assert_eq!(
        ATTEMPTS.lock()[&k],
        3,
        "one task ran twice: its first result was lost"
    );
    assert_eq!(got.iter().max(), Some(&3));
}

#[test]
fn max_retries_zero_fails_with_worker_crashed() {
    let rt = with_faults(Faults {
        kill_worker: Trigger::EveryNth(1),
        ..Faults::default()
    });
    match rt.task(double).max_retries(0).remote(1).get() {
        Err(Error::WorkerCrashed { cause, .. }) => assert!(cause.contains("injected fault")),
        other => panic!("unexpected {other:?}"),
    }
    match rt.task(double).max_retries(2).remote(1).get() {
        Err(Error::RetriesExhausted { attempts, .. }) => {
            assert_eq!(attempts.len(), 3);
            assert!(attempts.iter().all(|a| a.contains("died")));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn chaos_ten_thousand_tasks_with_one_percent_of_workers_killed() {
    let rt = with_faults(Faults {
        kill_worker: Trigger::EveryNth(100),
        kill_worker_at: FaultPoint::AfterRun,
        ..Faults::default()
    });
    let events = rt.events();
    let refs: Vec<_> = (0..10_000u64)
        .map(|i| rt.task(double).max_retries(10).remote(i))
        .collect();
    let values = rt.get(&refs, Some(LONG * 4)).unwrap();
    for (i, v) in values.into_iter().enumerate() {
        assert_eq!(v, 2 * i as u64);
    }
    // The router reports each worker death as it handles it.
    let mut failures = 0;
    while failures < 99 {
        match events.recv_timeout(LONG) {
            Ok(SupervisionEvent::Failed { child, .. }) if child.starts_with("worker-") => {
                failures += 1
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(
        failures >= 99,
        "about 1% of executions were killed: {failures}"
    );
}

#[test]
fn a_worker_pool_that_fails_too_fast_gives_up_and_stops_the_runtime() {
    let rt = rayx::Builder::new()
        .num_workers(1)
        .worker_restart_intensity(2, std::time::Duration::from_secs(3600))
        .faults(Faults {
            kill_worker: Trigger::EveryNth(1),
            ..Faults::default()
        })
        .start()
        .unwrap();
    let events = rt.events();
    let r = rt.task(double).max_retries(Retries::Infinite).remote(1);
    assert_eq!(r.get_timeout(LONG), Err(Error::ShutDown));
    let gave_up = events
        .try_iter()
        .any(|e| matches!(e, SupervisionEvent::GaveUp { ref child, .. } if child == "worker pool"));
    assert!(gave_up);
    assert!(eventually(LONG, || rt.is_shut_down()));
}

/// Fails (returns `Err`) on its first `fail_first` attempts.
fn fallible(key: u64, fail_first: u32) -> Result<u32, String> {
    let n = attempt(key);
    if n <= fail_first {
        return Err(format!("refused on attempt {n}"));
    }
    Ok(n)
}
rayx::remote!(fallible);

#[test]
fn a_task_that_returns_err_fails_and_is_retried_only_with_retry_exceptions() {
    let rt = rt2();
    let k = key();
    match rt.task(fallible).remote((k, 1)).get() {
        Err(Error::TaskFailed { cause, .. }) => assert_eq!(cause, "refused on attempt 1"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(ATTEMPTS.lock()[&k], 1, "not retried by default");
    let k = key();
    let r = rt
        .task(fallible)
        .max_retries(3)
        .retry_exceptions(true)
        .remote((k, 2));
    assert_eq!(r.get(), Ok(Ok(3)));
}
