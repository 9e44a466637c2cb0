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

// Supervision groups of user actors.

/// Counts its calls since it was (re)built; crashes on request.
struct Worker {
    calls: u32,
}
impl Actor for Worker {}
#[derive(Serialize, Deserialize)]
enum Job {
    Count,
    Crash,
}
impl Message for Job {
    type Reply = u32;
}
impl Handler<Job> for Worker {
    fn handle(&mut self, job: Job, _: &mut ActorContext<Self>) -> u32 {
        if let Job::Crash = job {
            panic!("worker crashed on purpose");
        }
        self.calls += 1;
        self.calls
    }
}
fn worker() -> Worker {
    Worker { calls: 0 }
}

/// Warms each actor up (one call each), so a restart shows as a count back at 1.
fn warmed(group: &rayx::Supervisor, rt: &Runtime, n: usize) -> Vec<ActorHandle<Worker>> {
    (0..n)
        .map(|_| {
            let a = rt.actor(worker).supervisor(group).spawn().unwrap();
            assert_eq!(a.call(Job::Count).get_timeout(LONG), Ok(1));
            a
        })
        .collect()
}

fn counts(actors: &[ActorHandle<Worker>]) -> Vec<u32> {
    actors
        .iter()
        .map(|a| a.call(Job::Count).get_timeout(LONG).unwrap())
        .collect()
}

#[test]
fn a_group_restarts_its_actors_by_its_strategy() {
    let rt = rt2();
    let hour = std::time::Duration::from_secs(3600);
    for (strategy, after) in [
        (rayx::Strategy::OneForOne, vec![2, 1, 2]),
        (rayx::Strategy::OneForAll, vec![1, 1, 1]),
        (rayx::Strategy::RestForOne, vec![2, 1, 1]),
    ] {
        let group = rt
            .supervisor("group")
            .strategy(strategy)
            .max_restarts(5, hour)
            .start();
        let actors = warmed(&group, &rt, 3);
        assert!(actors[1].call(Job::Crash).get_timeout(LONG).is_err());
        assert_eq!(counts(&actors), after, "{strategy:?}");
    }
}

#[test]
fn a_group_past_its_restart_intensity_stops_every_child_and_says_so() {
    let rt = rt2();
    let events = rt.events();
    let group = rt
        .supervisor("fragile")
        .strategy(rayx::Strategy::OneForOne)
        .max_restarts(1, std::time::Duration::from_secs(3600))
        .start();
    let actors = warmed(&group, &rt, 2);
    assert!(actors[0].call(Job::Crash).get_timeout(LONG).is_err());
    assert_eq!(
        actors[0].call(Job::Count).get_timeout(LONG),
        Ok(1),
        "restarted once"
    );
    assert!(actors[0].call(Job::Crash).get_timeout(LONG).is_err());
    for a in &actors {
        match a.call(Job::Count).get_timeout(LONG) {
            Err(Error::ActorDied { cause, .. }) => assert!(cause.contains("fragile"), "{cause}"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(group.gave_up());
    let gave_up = SupervisionEvent::GaveUp {
        child: "fragile".into(),
        restarts: 1,
    };
    assert!(events_until(&events, &gave_up).contains(&gave_up));
}

#[test]
fn a_nested_group_past_its_intensity_is_restarted_whole_by_its_parent() {
    let rt = rt2();
    let hour = std::time::Duration::from_secs(3600);
    let parent = rt
        .supervisor("parent")
        .strategy(rayx::Strategy::OneForOne)
        .max_restarts(1, hour)
        .start();
    let child = rt
        .supervisor("child")
        .strategy(rayx::Strategy::OneForOne)
        .max_restarts(0, hour)
        .parent(&parent)
        .start();
    let outside = warmed(&parent, &rt, 1);
    let inside = warmed(&child, &rt, 2);
    // The child group may not restart anything: it escalates, and the parent
    // restarts the whole child group (both its actors), not its own actor.
    assert!(inside[0].call(Job::Crash).get_timeout(LONG).is_err());
    assert_eq!(counts(&inside), vec![1, 1]);
    assert_eq!(counts(&outside), vec![2]);
    assert!(!child.gave_up());
    // Once more: the parent is past its own limit and, with no parent of its
    // own, gives up: everything under it stops.
    assert!(inside[1].call(Job::Crash).get_timeout(LONG).is_err());
    for a in outside.iter().chain(&inside) {
        assert!(matches!(
            a.call(Job::Count).get_timeout(LONG),
            Err(Error::ActorDied { .. })
        ));
    }
    assert!(parent.gave_up() && child.gave_up());
}

#[test]
fn an_actor_under_a_supervisor_takes_its_restart_limit_from_it() {
    let rt = rt2();
    let group = rt.supervisor("g").start();
    assert!(matches!(
        rt.actor(worker).supervisor(&group).max_restarts(2).spawn(),
        Err(Error::InvalidArgument(_))
    ));
}

fn hold_until(started: u64, release: u64) -> u64 {
    common::open(started);
    common::pass(release)
}
fn echo(x: u64) -> u64 {
    x
}
rayx::remote!(hold_until, echo);

/// A worker of a router that was restarted finishes its task and leaves: a
/// job submitted just then (while it may be watching the queue, when
/// submitters wake nobody) still runs, on the new pool.
#[test]
fn a_job_submitted_as_an_old_pool_worker_leaves_runs_on_the_new_pool() {
    let rt = supervised(rayx::Strategy::RestForOne, 1_000_000);
    for trial in 0..100u64 {
        let events = rt.events();
        let (started, release) = (common::gate(), common::gate());
        let held = rt.task(hold_until).remote((started, release));
        common::pass(started);
        rt.inject_system_failure("router").unwrap();
        loop {
            match events.recv_timeout(LONG) {
                Ok(SupervisionEvent::Restarted { child, .. }) if child == "router" => break,
                Ok(_) => {}
                Err(e) => panic!("trial {trial}: no restart of the router: {e:?}"),
            }
        }
        common::open(release);
        assert_eq!(held.get_timeout(LONG).unwrap(), release);
        // Submit 1..40 µs after the old worker's task ended.
        let at = std::time::Instant::now() + Duration::from_micros(trial % 40 + 1);
        while std::time::Instant::now() < at {
            std::hint::spin_loop();
        }
        let job = rt.task(echo).remote(trial);
        assert_eq!(job.get_timeout(LONG), Ok(trial), "trial {trial}");
    }
}
