//! The supervision tree: the root, its strategies and its restart intensity.

mod common;

use common::failing::*;
use common::{eventually, LONG};
use rayx::prelude::*;
use rayx::SupervisionEvent;

/// Collects events until `last` arrives (or the wait runs out); returns them.
fn events_until(events: &rayx::Events, last: &SupervisionEvent) -> Vec<SupervisionEvent> {
    let mut seen = Vec::new();
    while let Ok(e) = events.recv_timeout(LONG) {
        let done = &e == last;
        seen.push(e);
        if done {
            break;
        }
    }
    seen
}

fn restarted(seen: &[SupervisionEvent]) -> Vec<String> {
    seen.iter()
        .filter_map(|e| match e {
            SupervisionEvent::Restarted { child, .. } if !child.starts_with("worker-") => {
                Some(child.clone())
            }
            _ => None,
        })
        .collect()
}

fn supervised(strategy: rayx::Strategy, max: usize) -> Runtime {
    rayx::Builder::new()
        .num_workers(2)
        .supervision(strategy, max, std::time::Duration::from_secs(3600))
        .start()
        .unwrap()
}

#[test]
fn a_failed_router_is_restarted_by_every_strategy_and_serves_again() {
    for strategy in [
        rayx::Strategy::OneForOne,
        rayx::Strategy::OneForAll,
        rayx::Strategy::RestForOne,
    ] {
        let rt = supervised(strategy, 10);
        let events = rt.events();
        rt.inject_system_failure("router").unwrap();
        let last = SupervisionEvent::Restarted {
            child: "router".into(),
            attempt: 1,
        };
        let seen = events_until(&events, &last);
        assert!(seen.iter().any(|e| matches!(e, SupervisionEvent::Failed { child, cause } if child == "router" && cause.contains("injected"))), "{strategy:?}: {seen:?}");
        assert_eq!(restarted(&seen), vec!["router"], "{strategy:?}");
        // The restarted router runs work on fresh workers, and only on them.
        let refs: Vec<_> = (0..1000u64).map(|i| rt.task(double).remote(i)).collect();
        assert_eq!(
            rt.get(&refs, Some(LONG)).unwrap(),
            (0..1000).map(|i| i * 2).collect::<Vec<_>>()
        );
        assert!(
            eventually(LONG, || rt.worker_counts() == (2, 0)),
            "{:?}",
            rt.worker_counts()
        );
    }
}

#[test]
fn a_supervisor_past_its_restart_intensity_gives_up_and_the_runtime_stops() {
    let rt = supervised(rayx::Strategy::RestForOne, 1);
    let events = rt.events();
    let g = common::gate();
    let pending = rt.task(held).remote(g);
    rt.inject_system_failure("router").unwrap();
    let first = SupervisionEvent::Restarted {
        child: "router".into(),
        attempt: 1,
    };
    assert!(events_until(&events, &first).contains(&first));
    rt.inject_system_failure("router").unwrap();
    let gave_up = SupervisionEvent::GaveUp {
        child: "supervisor".into(),
        restarts: 1,
    };
    assert!(events_until(&events, &gave_up).contains(&gave_up));
    assert_eq!(pending.get_timeout(LONG), Err(Error::ShutDown));
    assert!(eventually(LONG, || rt.is_shut_down()));
    common::open(g);
}

#[test]
fn only_system_actors_can_be_failed() {
    let rt = rt2();
    for name in ["nobody", "owner", "object-store"] {
        assert!(matches!(
            rt.inject_system_failure(name),
            Err(Error::InvalidArgument(_))
        ));
    }
}
