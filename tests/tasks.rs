//! Tasks: remote functions, arguments, nesting, errors.

mod common;

use common::{gate, open, pass, LONG};
use rayx::prelude::*;

fn rt2() -> Runtime {
    rayx::Builder::new()
        .num_workers(2)
        .start()
        .expect("runtime starts")
}

fn square(x: i64) -> i64 {
    x * x
}
fn add3(a: i64, b: i64, c: i64) -> i64 {
    a + b + c
}
fn noop() -> u8 {
    0
}
fn concat(a: String, b: Vec<u8>) -> String {
    format!("{a}{}", b.len())
}
fn fib(n: u64) -> u64 {
    if n < 2 {
        return n;
    }
    let rt = Runtime::current().expect("inside a task");
    let a = rt.task(fib).remote(n - 1);
    let b = rt.task(fib).remote(n - 2);
    a.get().expect("fib(n-1)") + b.get().expect("fib(n-2)")
}
fn sum_children(n: u64) -> u64 {
    let rt = Runtime::current().expect("inside a task");
    let kids: Vec<ObjectRef<i64>> = (0..n as i64).map(|i| rt.task(square).remote(i)).collect();
    rt.get(&kids, None)
        .expect("children")
        .into_iter()
        .sum::<i64>() as u64
}
fn boom(x: i64) -> i64 {
    if x > 0 {
        panic!("boom at {x}");
    }
    x
}
fn plus_one(x: i64) -> i64 {
    x + 1
}
fn gated(id: u64) -> u64 {
    pass(id)
}
fn read_nested(r: ObjectRef<i64>) -> i64 {
    r.get().expect("nested ref resolves") * 10
}
fn to_i64(x: u64) -> i64 {
    x as i64
}
fn not_registered(x: i64) -> i64 {
    x
}

mod other {
    pub fn square(x: i64) -> i64 {
        -x * x
    }
}

rayx::remote!(
    square,
    add3,
    noop,
    concat,
    fib,
    sum_children,
    boom,
    plus_one,
    gated,
    read_nested,
    to_i64,
    other::square
);

#[test]
fn a_task_returns_its_value() {
    let rt = rt2();
    assert_eq!(rt.task(square).remote(5).get().unwrap(), 25);
    assert_eq!(rt.task(noop).remote(()).get().unwrap(), 0);
}

#[test]
fn one_hundred_thousand_tasks_are_all_correct() {
    let rt = rt2();
    let refs: Vec<ObjectRef<i64>> = (0..100_000).map(|i| rt.task(square).remote(i)).collect();
    let values = rt.get(&refs, Some(LONG * 4)).unwrap();
    assert_eq!(values.len(), 100_000);
    for (i, v) in values.into_iter().enumerate() {
        assert_eq!(v, (i as i64) * (i as i64));
    }
}

#[test]
fn several_arguments_mix_values_and_refs() {
    let rt = rt2();
    let x = rt.put(10).unwrap();
    let y = rt.task(square).remote(3);
    assert_eq!(rt.task(add3).remote((&x, 5, y)).get().unwrap(), 24);
    let s = rt.put("len=".to_string()).unwrap();
    assert_eq!(
        rt.task(concat).remote((&s, vec![0u8; 7])).get().unwrap(),
        "len=7"
    );
}

#[test]
fn chains_of_dependent_tasks_run_in_order() {
    let rt = rt2();
    let mut r = rt.task(plus_one).remote(0);
    for _ in 0..999 {
        r = rt.task(plus_one).remote(r);
    }
    assert_eq!(r.get().unwrap(), 1000);
}

#[test]
fn a_pending_argument_holds_the_task_back() {
    let rt = rt2();
    let g = gate();
    let blocker = rt.task(gated).remote(g);
    let after = rt.task(to_i64).remote(&blocker);
    // Independent work runs while `after` waits for its argument.
    assert_eq!(
        rt.task(plus_one)
            .remote(rt.task(square).remote(4))
            .get()
            .unwrap(),
        17
    );
    assert!(matches!(
        after.get_timeout(Duration::ZERO),
        Err(Error::GetTimeout { .. })
    ));
    open(g);
    assert_eq!(after.get().unwrap(), g as i64);
}

#[test]
fn tasks_submit_and_wait_for_tasks() {
    let rt = rt2();
    assert_eq!(
        rt.task(sum_children).remote(100).get().unwrap(),
        (0..100).map(|i| i * i).sum::<u64>()
    );
}

#[test]
fn recursive_tasks_finish_on_two_workers() {
    // Each level blocks in get; blocked workers are topped up so the tree finishes.
    let rt = rt2();
    assert_eq!(rt.task(fib).remote(15).get_timeout(LONG * 4).unwrap(), 610);
    let (live, blocked) = rt.worker_counts();
    assert!(live >= 2, "at least the configured workers stay: {live}");
    assert_eq!(blocked, 0);
}

#[test]
fn a_panic_becomes_a_task_error_naming_it() {
    let rt = rt2();
    let err = rt.task(boom).remote(3).get().unwrap_err();
    match &err {
        Error::TaskFailed { task, cause } => {
            assert!(task.ends_with("boom"), "{task}");
            assert!(cause.contains("boom at 3"), "{cause}");
            assert!(cause.contains("tests/tasks.rs"), "location in {cause}");
        }
        other => panic!("unexpected {other:?}"),
    }
    // The pool survives: more tasks run.
    assert_eq!(rt.task(boom).remote(0).get().unwrap(), 0);
    assert_eq!(rt.task(square).remote(9).get().unwrap(), 81);
}

#[test]
fn an_error_reaches_every_dependent_task() {
    let rt = rt2();
    let failed = rt.task(boom).name("first").remote(1);
    let second = rt.task(plus_one).name("second").remote(&failed);
    let third = rt.task(plus_one).name("third").remote(&second);
    let err = third.get().unwrap_err();
    assert!(
        matches!(&err, Error::DependencyFailed { task, .. } if task == "third"),
        "{err:?}"
    );
    match err.root_cause() {
        Error::TaskFailed { task, cause } => {
            assert_eq!(task, "first");
            assert!(cause.contains("boom at 1"));
        }
        other => panic!("root cause {other:?}"),
    }
    assert!(err.to_string().contains("boom at 1"), "{err}");
}

#[test]
fn an_unregistered_function_is_a_typed_error() {
    let rt = rt2();
    match rt.task(not_registered).remote(1).get() {
        Err(Error::FunctionNotRegistered { name }) => assert!(name.ends_with("not_registered")),
        other => panic!("unexpected {other:?}"),
    }
    match rt.task(|x: i64| x).remote(1).get() {
        Err(Error::FunctionNotRegistered { .. }) => {}
        other => panic!("closures are not registered: {other:?}"),
    }
}

#[test]
fn functions_of_the_same_name_in_two_modules_do_not_collide() {
    let rt = rt2();
    assert_eq!(rt.task(square).remote(3).get().unwrap(), 9);
    assert_eq!(rt.task(other::square).remote(3).get().unwrap(), -9);
}

#[test]
fn a_nested_ref_stays_a_ref() {
    let rt = rt2();
    let inner = rt.put(7i64).unwrap();
    // read_nested takes ObjectRef<i64>: the ref itself is passed, not its value.
    let r = rt.task(read_nested).remote(inner.clone());
    assert_eq!(r.get().unwrap(), 70);
}

#[test]
fn a_failed_task_error_is_stable_across_gets() {
    let rt = rt2();
    let r = rt.task(boom).remote(5);
    let a = r.get().unwrap_err();
    let b = r.get().unwrap_err();
    assert_eq!(a, b);
}

// Recursion with bounded threads (issue 7, defect 1).

/// Counts the worker threads a runtime started, from its events.
fn workers_started(events: &rayx::Events) -> usize {
    events
        .try_iter()
        .filter(|e| matches!(e, rayx::SupervisionEvent::Started { child } if child.starts_with("worker-")))
        .count()
}

#[test]
fn fib_25_by_tasks_on_two_workers_needs_threads_for_its_depth_not_its_width() {
    let rt = rayx::Builder::new().num_workers(2).start().unwrap();
    let events = rt.events();
    // 242,785 tasks, each waiting on two children. A worker that waits for a
    // task nobody has started runs it itself, so threads grow with the depth.
    assert_eq!(
        rt.task(fib)
            .remote(25)
            .get_timeout(Duration::from_secs(600)),
        Ok(75_025)
    );
    let started = workers_started(&events) + 2;
    println!("fib(25) on 2 workers started {started} worker threads in all");
    assert!(
        started <= 2 * 26 + 2,
        "{started} threads for a tree of depth 25"
    );
}

#[test]
fn fib_16_finishes_on_a_default_runtime() {
    let rt = rayx::init().unwrap();
    assert_eq!(
        rt.task(fib)
            .remote(16)
            .get_timeout(Duration::from_secs(300)),
        Ok(987)
    );
}

struct Slow;
impl Actor for Slow {}
#[derive(Serialize, Deserialize)]
struct Answer;
impl Message for Answer {
    type Reply = u64;
}
impl Handler<Answer> for Slow {
    fn handle(&mut self, _: Answer, _: &mut ActorContext<Self>) -> u64 {
        42
    }
}
/// Waits for a sync actor's reply: its mailbox needs a worker of its own.
fn ask_actor(_: u8) -> Result<u64, String> {
    let rt = Runtime::current().expect("in a task");
    let a = rt.actor(|| Slow).spawn().map_err(|e| e.to_string())?;
    a.call(Answer).get().map_err(|e| e.to_string())
}
/// The same through `wait`: a worker's wait counts as blocked too.
fn wait_for_actor(_: u8) -> String {
    let rt = Runtime::current().expect("in a task");
    let a = rt.actor(|| Slow).spawn().expect("spawn");
    match rt.wait(vec![a.call(Answer)], 1, None) {
        Ok((r, p)) => format!("returned {} ready {} pending", r.len(), p.len()),
        Err(e) => format!("{e:?}"),
    }
}
rayx::remote!(ask_actor, wait_for_actor);

#[test]
fn a_pool_at_max_workers_says_so_and_a_get_that_cannot_progress_fails() {
    let rt = rayx::Builder::new()
        .num_workers(1)
        .max_workers(1)
        .start()
        .unwrap();
    let events = rt.events();
    // The only worker waits for an actor whose mailbox no worker can run.
    match rt.task(ask_actor).remote(0).get_timeout(LONG) {
        Err(Error::TaskFailed { cause, .. }) => assert!(cause.contains("max_workers"), "{cause}"),
        other => panic!("unexpected {other:?}"),
    }
    let limit = std::iter::from_fn(|| events.recv_timeout(LONG).ok())
        .find(|e| matches!(e, rayx::SupervisionEvent::WorkerLimitReached { .. }));
    assert_eq!(
        limit,
        Some(rayx::SupervisionEvent::WorkerLimitReached { max_workers: 1 })
    );
}

// Panic messages (issue 7, defect 9).

fn resumes_a_caught_panic(_: u8) -> u8 {
    // User code catches one panic, then re-raises another without the hook
    // (as rayon re-raises a worker's panic).
    let _ = std::panic::catch_unwind(|| panic!("first, caught and handled"));
    std::panic::resume_unwind(Box::new("second, re-raised".to_string()))
}
rayx::remote!(resumes_a_caught_panic);

#[test]
fn a_resumed_panic_is_reported_with_its_own_message() {
    let rt = rt2();
    match rt.task(resumes_a_caught_panic).remote(0).get() {
        Err(Error::TaskFailed { cause, .. }) => {
            assert!(cause.contains("second, re-raised"), "{cause}");
            assert!(!cause.contains("first"), "{cause}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_workers_wait_that_cannot_progress_fails_with_worker_limit() {
    let rt = rayx::Builder::new()
        .num_workers(1)
        .max_workers(1)
        .start()
        .expect("runtime starts");
    let out = rt.task(wait_for_actor).remote(0).get_timeout(LONG).unwrap();
    assert!(out.contains("WorkerLimitReached"), "{out}");
}
