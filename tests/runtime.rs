//! The runtime: several at once, use from threads and async code, shutdown.

mod common;

use common::{gate, open, pass, LONG};
use rayx::prelude::*;
use rayx::SupervisionEvent;

fn double(x: i64) -> i64 {
    x * 2
}
fn gated(id: u64) -> u64 {
    pass(id)
}
fn blocks_on_child(x: i64) -> i64 {
    let rt = Runtime::current().expect("in a task");
    rt.task(double).remote(x).get().expect("child")
}
/// Waits for an actor's reply: the actor's mailbox runs on another worker.
fn blocks_on_actor(s: String) -> String {
    let rt = Runtime::current().expect("in a task");
    let echo = rt.actor(|| Echo).spawn().expect("actor");
    echo.call(Say(s)).get().expect("reply")
}
fn to_i64(x: u64) -> i64 {
    x as i64
}
rayx::remote!(double, gated, blocks_on_child, blocks_on_actor, to_i64);

struct Echo;
impl Actor for Echo {}
#[derive(Serialize, Deserialize)]
struct Say(String);
impl Message for Say {
    type Reply = String;
}
impl Handler<Say> for Echo {
    fn handle(&mut self, Say(s): Say, _: &mut ActorContext<Self>) -> String {
        s
    }
}

fn assert_send_sync_clone<T: Send + Sync + Clone>() {}

#[test]
fn handles_are_clone_send_sync() {
    assert_send_sync_clone::<Runtime>();
    assert_send_sync_clone::<ObjectRef<Vec<u8>>>();
    assert_send_sync_clone::<ActorHandle<Echo>>();
}

#[test]
fn two_runtimes_live_side_by_side() {
    let a = rayx::Builder::new().num_workers(1).start().unwrap();
    let b = rayx::Builder::new().num_workers(2).start().unwrap();
    let ra = a.task(double).remote(1);
    let rb = b.task(double).remote(2);
    assert_eq!((ra.get().unwrap(), rb.get().unwrap()), (2, 4));
    let ea = a.actor(|| Echo).name("echo").spawn().unwrap();
    let eb = b.actor(|| Echo).name("echo").spawn().unwrap();
    assert_eq!(ea.call(Say("a".into())).get().unwrap(), "a");
    assert_eq!(eb.call(Say("b".into())).get().unwrap(), "b");
    a.shutdown();
    assert_eq!(
        b.task(double).remote(5).get().unwrap(),
        10,
        "b is unaffected"
    );
    assert_eq!(a.task(double).remote(5).get(), Err(Error::ShutDown));
}

#[test]
fn the_handle_works_from_plain_threads() {
    let rt = rayx::Builder::new().num_workers(2).start().unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let rt = rt.clone();
            std::thread::spawn(move || {
                (0..250)
                    .map(|i| {
                        rt.task(double)
                            .remote(t * 1000 + i)
                            .get_timeout(LONG)
                            .unwrap()
                    })
                    .sum::<i64>()
            })
        })
        .collect();
    let total: i64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let expected: i64 = (0..4)
        .flat_map(|t| (0..250).map(move |i| 2 * (t * 1000 + i)))
        .sum();
    assert_eq!(total, expected);
}

#[tokio::test(flavor = "current_thread")]
async fn works_inside_a_tokio_current_thread_runtime() {
    let rt = rayx::Builder::new().num_workers(2).start().unwrap();
    let r = rt.task(double).remote(21);
    assert_eq!(r.await.unwrap(), 42);
    let e = rt.actor(|| Echo).spawn().unwrap();
    assert_eq!(e.call(Say("hi".into())).await.unwrap(), "hi");
    let many: Vec<_> = (0..100).map(|i| rt.task(double).remote(i)).collect();
    let mut sum = 0;
    for r in &many {
        sum += r.await.unwrap();
    }
    assert_eq!(sum, 9900);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_inside_a_tokio_multi_thread_runtime() {
    let rt = rayx::init().unwrap();
    let joins: Vec<_> = (0..8)
        .map(|i| {
            let rt = rt.clone();
            tokio::spawn(async move { rt.task(double).remote(i).await })
        })
        .collect();
    let mut out = Vec::new();
    for j in joins {
        out.push(j.await.unwrap().unwrap());
    }
    assert_eq!(out, (0..8).map(|i| i * 2).collect::<Vec<_>>());
}

#[actix_rt::test]
async fn works_inside_an_actix_system() {
    let rt = rayx::Builder::new().num_workers(2).start().unwrap();
    assert_eq!(rt.task(blocks_on_child).remote(4).await.unwrap(), 8);
    rt.shutdown();
}

#[test]
fn shutdown_fails_pending_gets_and_later_calls() {
    let rt = rayx::Builder::new().num_workers(2).start().unwrap();
    let g = gate();
    let stuck = rt.task(gated).remote(g);
    let queued: Vec<_> = (0..10).map(|_| rt.task(gated).remote(g)).collect();
    let echo = rt.actor(|| Echo).spawn().unwrap();
    rt.shutdown();
    assert!(rt.is_shut_down());
    assert_eq!(stuck.get_timeout(LONG), Err(Error::ShutDown));
    for r in queued {
        assert_eq!(r.get_timeout(LONG), Err(Error::ShutDown));
    }
    assert_eq!(
        rt.task(double).remote(1).get_timeout(LONG),
        Err(Error::ShutDown)
    );
    assert!(matches!(rt.put(1), Err(Error::ShutDown)));
    assert!(matches!(rt.actor(|| Echo).spawn(), Err(Error::ShutDown)));
    assert!(matches!(rt.get_actor::<Echo>("x"), Err(Error::ShutDown)));
    assert!(echo.call(Say("late".into())).get_timeout(LONG).is_err());
    rt.shutdown(); // idempotent
    open(g); // let the abandoned worker thread go
}

#[test]
fn dropping_the_last_handle_shuts_down() {
    let rt = rayx::Builder::new().num_workers(2).start().unwrap();
    let g = gate();
    let pending = rt.task(gated).remote(g);
    let clone = rt.clone();
    drop(rt);
    assert_eq!(
        clone.task(double).remote(3).get().unwrap(),
        6,
        "a clone keeps it running"
    );
    drop(clone);
    assert_eq!(pending.get_timeout(LONG), Err(Error::ShutDown));
    open(g);
}

#[test]
fn supervision_events_are_observable() {
    let rt = rayx::Builder::new().num_workers(1).start().unwrap();
    let events = rt.events();
    // A task blocked in get makes the router start another worker (a child
    // task it would run itself; an actor's mailbox needs another worker).
    assert_eq!(rt.task(blocks_on_child).remote(5).get().unwrap(), 10);
    assert_eq!(
        rt.task(blocks_on_actor)
            .remote("hi".to_string())
            .get()
            .unwrap(),
        "hi"
    );
    // worker-0 is the configured one; worker-1 was started for the blocked task.
    let topped_up = SupervisionEvent::Started {
        child: "worker-1".into(),
    };
    let mut found = false;
    while let Ok(e) = events.recv_timeout(LONG) {
        if e == topped_up {
            found = true;
            break;
        }
    }
    assert!(found, "worker-1 started");
    rt.shutdown();
    let mut stopped = Vec::new();
    while let Ok(e) = events.recv_timeout(LONG) {
        if let SupervisionEvent::Stopped { child, .. } = e {
            if child.contains("Echo") {
                continue; // the task's actor dies with the runtime too
            }
            stopped.push(child);
            if stopped.len() == 1 {
                break;
            }
        }
    }
    assert_eq!(stopped, vec!["router"]);
}

#[test]
fn zero_workers_is_rejected() {
    assert!(matches!(
        rayx::Builder::new().num_workers(0).start(),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn fresh_runtimes_under_load_from_many_threads_lose_no_wakeup() {
    // Regression: a worker that went idle inside its first turn could miss the
    // message that woke it, leaving a task queued with every worker asleep.
    for _ in 0..100 {
        let rt = rayx::Builder::new().num_workers(2).start().unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let rt = rt.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        let r = rt.task(double).remote(t * 100 + i);
                        assert_eq!(r.get_timeout(LONG).expect("task runs"), 2 * (t * 100 + i));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}

/// Issue 7, defect 10: objects pending at shutdown fail with `ShutDown`, every
/// one, whichever shard it is in and whatever it waited on.
#[test]
fn every_object_pending_at_shutdown_fails_with_shut_down() {
    let rt = rayx::Builder::new().num_workers(2).start().unwrap();
    let g = gate();
    let held: Vec<ObjectRef<u64>> = (0..200).map(|_| rt.task(gated).remote(g)).collect();
    let dependents: Vec<ObjectRef<i64>> = held.iter().map(|h| rt.task(to_i64).remote(h)).collect();
    rt.shutdown();
    open(g);
    for r in &held {
        assert_eq!(r.get_timeout(LONG), Err(Error::ShutDown));
    }
    for r in &dependents {
        assert_eq!(r.get_timeout(LONG), Err(Error::ShutDown));
    }
}

/// Issue 7, defect 12: settings that cannot work are refused at start.
#[test]
fn settings_that_cannot_work_are_refused_at_start() {
    let refused = |b: rayx::Builder| match b.start() {
        Err(Error::InvalidArgument(why)) => why,
        other => panic!("unexpected {other:?}"),
    };
    assert!(refused(rayx::Builder::new().mailbox_capacity(0)).contains("mailbox_capacity"));
    assert!(refused(rayx::Builder::new().max_workers(0)).contains("max_workers"));
    assert!(refused(rayx::Builder::new().async_threads(0)).contains("async_threads"));
    assert!(refused(rayx::Builder::new().num_workers(0)).contains("num_workers"));
    assert!(refused(rayx::Builder::new().num_workers(4).max_workers(2)).contains("max_workers"));
    assert!(refused(rayx::Builder::new().head().dead_nodes_kept(0)).contains("dead_nodes_kept"));
}

#[test]
fn the_key_value_store_works_outside_a_cluster_and_per_runtime() {
    let a = rayx::Builder::new().num_workers(1).start().unwrap();
    let b = rayx::Builder::new().num_workers(1).start().unwrap();
    assert!(a.kv_put("k", b"one", false).unwrap());
    assert!(
        !a.kv_put("k", b"two", false).unwrap(),
        "kept without overwrite"
    );
    assert_eq!(a.kv_get("k").unwrap().as_deref(), Some(&b"one"[..]));
    assert!(a.kv_put("k", b"two", true).unwrap());
    assert_eq!(a.kv_get("k").unwrap().as_deref(), Some(&b"two"[..]));
    assert_eq!(b.kv_get("k").unwrap(), None, "each runtime has its own");
    assert!(a.kv_delete("k").unwrap());
    assert!(!a.kv_delete("k").unwrap());
    assert_eq!(a.kv_get("k").unwrap(), None);
}
