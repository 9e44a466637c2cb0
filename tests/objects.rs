//! Objects: put, get, wait, reference counting, the object store.

mod common;

use common::{eventually, gate, open, pass, LONG};
use rayx::prelude::*;
use std::sync::Arc;

fn rt2() -> Runtime {
    rayx::Builder::new()
        .num_workers(2)
        .start()
        .expect("runtime starts")
}

/// One worker, and an object store of `bytes`.
fn small_store(bytes: u64) -> Runtime {
    rayx::Builder::new()
        .num_workers(1)
        .object_store_memory(bytes)
        .start()
        .expect("runtime starts")
}

fn gated(id: u64) -> u64 {
    pass(id)
}
fn len(v: Vec<u8>) -> usize {
    v.len()
}
fn len_after_gate(v: Vec<u8>, _gate: u64) -> usize {
    v.len()
}
fn sum_refs(refs: Vec<ObjectRef<i64>>) -> i64 {
    refs.iter().map(|r| r.get().expect("inner ref")).sum()
}
fn ident(x: u64) -> u64 {
    x
}
fn make_ref(x: i64) -> ObjectRef<i64> {
    Runtime::current().expect("in a task").put(x).expect("put")
}
rayx::remote!(gated, ident, len, len_after_gate, sum_refs, make_ref);

const MIB: usize = 1 << 20;

#[test]
fn put_then_get() {
    let rt = rt2();
    let r = rt.put(vec![1u32, 2, 3]).unwrap();
    assert_eq!(r.get().unwrap(), vec![1, 2, 3]);
    assert!(r.is_ready());
}

#[test]
fn get_many_keeps_input_order() {
    let rt = rt2();
    let refs: Vec<ObjectRef<usize>> = (0..50).rev().map(|i| rt.put(i).unwrap()).collect();
    assert_eq!(
        rt.get(&refs, None).unwrap(),
        (0..50).rev().collect::<Vec<_>>()
    );
    assert_eq!(rt.get::<usize>(&[], None).unwrap(), Vec::<usize>::new());
}

/// Many clients getting batches at once (the getters beyond the spin policy's
/// places sleep for a batch's last ref first): every value, in input order;
/// a failed ref's error, not another's; and the timeout, once.
#[test]
fn many_clients_getting_batches_read_every_value_in_order() {
    fn echo(i: u64) -> u64 {
        i
    }
    fn fail_on(i: u64) -> Result<u64, String> {
        if i == 7 {
            Err(format!("no {i}"))
        } else {
            Ok(i)
        }
    }
    fn fail_or_hold(fail: bool, g: u64) -> Result<u64, String> {
        if fail {
            Err("failed first".into())
        } else {
            Ok(pass(g))
        }
    }
    rayx::remote!(echo, fail_on, fail_or_hold);
    let rt = rt2();
    std::thread::scope(|s| {
        for client in 0..4u64 {
            let rt = &rt;
            s.spawn(move || {
                for round in 0..50u64 {
                    let base = client * 1_000_000 + round * 1000;
                    let refs: Vec<_> = (0..100).map(|i| rt.task(echo).remote(base + i)).collect();
                    let want: Vec<u64> = (0..100).map(|i| base + i).collect();
                    assert_eq!(rt.get(&refs, None).unwrap(), want);
                }
                let refs: Vec<_> = (0..20).map(|i| rt.task(fail_on).remote(i)).collect();
                match rt.get(&refs, None) {
                    Err(Error::TaskFailed { cause, .. }) => {
                        assert!(cause.contains("no 7"), "{cause}")
                    }
                    other => panic!("expected the failure of ref 7, got {other:?}"),
                }
                // A failure early in a batch is reported as itself, not after
                // the last ref (held until the end of the test) nor as a timeout.
                let g = gate();
                let refs = [
                    rt.task(fail_or_hold).remote((true, g)),
                    rt.task(fail_or_hold).remote((false, g)),
                ];
                match rt.get(&refs, Some(LONG)) {
                    Err(Error::TaskFailed { cause, .. }) => {
                        assert!(cause.contains("failed first"), "{cause}")
                    }
                    other => panic!("expected the first ref's failure, got {other:?}"),
                }
                open(g);
                // A ref that never completes within the timeout, last or first.
                let g = gate();
                let stuck = rt.task(gated).remote(g);
                let done = rt.put(1u64).unwrap();
                let t = Duration::from_millis(50);
                for refs in [[done.clone(), stuck.clone()], [stuck.clone(), done.clone()]] {
                    assert_eq!(
                        rt.get(&refs, Some(t)),
                        Err(Error::GetTimeout { timeout: t })
                    );
                }
                open(g);
                assert_eq!(rt.get(&[done, stuck], Some(LONG)).unwrap(), vec![1, g]);
            });
        }
    });
}

#[test]
fn get_times_out_with_a_typed_error() {
    let rt = rt2();
    let g = gate();
    let r = rt.task(gated).remote(g);
    let t = Duration::from_millis(20);
    assert_eq!(r.get_timeout(t), Err(Error::GetTimeout { timeout: t }));
    assert!(matches!(
        r.get_timeout(Duration::ZERO),
        Err(Error::GetTimeout { .. })
    ));
    assert!(matches!(
        rt.get(std::slice::from_ref(&r), Some(t)),
        Err(Error::GetTimeout { .. })
    ));
    open(g);
    assert_eq!(r.get_timeout(LONG).unwrap(), g);
}

#[test]
fn wait_returns_ready_and_pending_in_input_order() {
    let rt = rt2();
    let g = gate();
    let refs = vec![
        rt.task(gated).remote(g),
        rt.put(1).unwrap(),
        rt.task(gated).remote(g),
        rt.put(2).unwrap(),
        rt.put(3).unwrap(),
    ];
    let (ready, pending) = rt.wait(&refs, 2, None).unwrap();
    assert_eq!(ready, vec![refs[1].clone(), refs[3].clone()]);
    assert_eq!(
        pending,
        vec![refs[0].clone(), refs[2].clone(), refs[4].clone()]
    );

    // Not enough ready before the timeout: what is ready comes back.
    let (ready, pending) = rt.wait(&refs, 5, Some(Duration::from_millis(20))).unwrap();
    assert_eq!(
        ready,
        vec![refs[1].clone(), refs[3].clone(), refs[4].clone()]
    );
    assert_eq!(pending, vec![refs[0].clone(), refs[2].clone()]);

    open(g);
    let (ready, pending) = rt.wait(&refs, 5, Some(LONG)).unwrap();
    assert_eq!(ready, refs);
    assert!(pending.is_empty());
}

#[test]
fn wait_edge_cases() {
    let rt = rt2();
    let refs = vec![rt.put(1).unwrap()];
    assert!(matches!(
        rt.wait(&refs, 2, None),
        Err(Error::InvalidArgument(_))
    ));
    let (ready, pending) = rt.wait::<i32>(&[], 0, None).unwrap();
    assert!(ready.is_empty() && pending.is_empty());
    let (ready, pending) = rt.wait(&refs, 1, Some(Duration::ZERO)).unwrap();
    assert_eq!((ready.len(), pending.len()), (1, 0));
}

#[test]
fn store_usage_returns_to_zero_after_drops() {
    let rt = rt2();
    assert_eq!(rt.memory().objects, 0);
    let big = rt.put(vec![7u8; 4 * MIB]).unwrap();
    let small = rt.put(5u64).unwrap();
    let m = rt.memory();
    assert_eq!(m.objects, 2);
    assert_eq!(m.store_objects, 1);
    assert_eq!(m.store_bytes, 4 * MIB as u64);
    assert!(m.inline_bytes > 0);
    let copy = big.clone();
    drop(big);
    assert_eq!(
        rt.memory().store_bytes,
        4 * MIB as u64,
        "a clone keeps it alive"
    );
    drop((copy, small));
    let m = rt.memory();
    assert_eq!(
        (m.objects, m.inline_bytes, m.store_objects, m.store_bytes),
        (0, 0, 0, 0)
    );
}

/// `put_copy` stores a copy (the caller keeps its buffer). A large copy's
/// buffer goes back to the runtime's warm memory once the object and every
/// reader's share of it are gone, and the next copy of a like size lands in
/// it, holding its own bytes.
#[test]
fn put_copy_stores_a_copy_and_lands_the_next_in_warm_memory() {
    let rt = rt2();
    let small = rt.put_copy(b"abc").unwrap();
    assert_eq!(small.get().unwrap().as_ref(), b"abc");
    let data: Vec<u8> = (0..4 * MIB).map(|i| (i % 251) as u8).collect();
    let r = rt.put_copy(&data).unwrap();
    assert_eq!(rt.memory().store_bytes, 4 * MIB as u64);
    let read = r.get().unwrap();
    assert_eq!(read.as_ref(), &data[..]);
    let at = read.as_ptr();
    assert_eq!(r.get().unwrap().as_ptr(), at, "gets share the stored copy");
    let (kept, taken) = rt.warm_memory();
    drop(r);
    assert_eq!(rt.memory().store_bytes, 0);
    assert_eq!(
        rt.warm_memory().0,
        kept,
        "a reader's share holds the buffer"
    );
    drop(read);
    assert!(
        eventually(LONG, || rt.warm_memory().0 == kept + 4 * MIB),
        "kept once the last share went: {:?}",
        rt.warm_memory()
    );
    let other: Vec<u8> = data.iter().map(|b| b ^ 0xff).collect();
    let again = rt.put_copy(&other).unwrap();
    let read = again.get().unwrap();
    assert_eq!(read.as_ptr(), at, "the kept buffer is the one taken");
    assert_eq!(rt.warm_memory(), (kept, taken + 1));
    assert_eq!(read.as_ref(), &other[..], "its own bytes, none of the last");
    assert_eq!(data[..3], [0, 1, 2], "the caller's buffer is its own");
    drop((again, read, small));
    // A copy large enough to be split over threads holds every byte.
    let large: Vec<u8> = (0..40 * MIB).map(|i| (i % 241) as u8).collect();
    let r = rt.put_copy(&large).unwrap();
    assert!(r.get().unwrap().as_ref() == &large[..]);
    drop(r);
    assert_eq!(rt.memory().objects, 0);
}

/// A copy the store has no room for is refused before it is made: no
/// buffer is taken or filled (so none is left in the warm memory either).
#[test]
fn put_copy_into_a_full_store_is_refused_before_the_copy() {
    let rt = small_store(64 * MIB as u64);
    let filler = rt.put(vec![0u8; 60 * MIB]).unwrap();
    match rt.put_copy(&vec![1u8; 8 * MIB]) {
        Err(Error::ObjectStoreFull {
            requested,
            capacity,
            ..
        }) => assert_eq!((requested, capacity), (8 * MIB as u64, 64 * MIB as u64)),
        other => panic!("expected ObjectStoreFull, got {other:?}"),
    }
    assert_eq!(rt.warm_memory(), (0, 0), "no buffer was taken");
    drop(filler);
    let r = rt.put_copy(&vec![1u8; 8 * MIB]).unwrap();
    assert_eq!(r.get().unwrap().len(), 8 * MIB);
    assert_eq!(
        rt.memory().store_bytes,
        8 * MIB as u64,
        "the room was held once"
    );
}

/// What the warm memory keeps is given back after 10 s unused, with no
/// further call into the runtime.
#[test]
fn warm_memory_is_given_back_after_it_is_kept_unused() {
    let rt = rt2();
    drop(rt.put_copy(&vec![1u8; 2 * MIB]).unwrap());
    assert!(
        eventually(LONG, || rt.warm_memory().0 == 2 * MIB),
        "kept: {:?}",
        rt.warm_memory()
    );
    assert!(
        eventually(LONG, || rt.warm_memory().0 == 0),
        "given back: {:?}",
        rt.warm_memory()
    );
}

/// Object numbers come to each thread in blocks: ids stay unique when many
/// threads put and submit at once, and when one thread alternates between
/// two runtimes; the inline bytes one thread counts and another frees sum
/// back to zero.
#[test]
fn ids_are_unique_across_threads_and_runtimes_and_memory_sums_to_zero() {
    let (a, b) = (rt2(), rt2());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (a, b) = (a.clone(), b.clone());
            std::thread::spawn(move || {
                let mut refs = Vec::new();
                for i in 0..2_000u64 {
                    let rt = if (i / 7 + t) % 2 == 0 { &a } else { &b };
                    let r = if i % 3 == 0 {
                        rt.task(ident).remote(i)
                    } else {
                        rt.put(i).expect("put")
                    };
                    refs.push(r);
                }
                refs
            })
        })
        .collect();
    let refs: Vec<ObjectRef<u64>> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("thread"))
        .collect();
    let ids: std::collections::HashSet<_> = refs.iter().map(|r| r.id()).collect();
    assert_eq!(ids.len(), refs.len(), "every object has its own id");
    // Freed here, on another thread than the one that counted each value.
    let values: Vec<u64> = refs.iter().map(|r| r.get().expect("value")).collect();
    assert_eq!(values.iter().sum::<u64>(), 4 * (0..2_000u64).sum::<u64>());
    drop(refs);
    for rt in [&a, &b] {
        // Task results go once their lineage and queued copies are let go.
        assert!(eventually(LONG, || {
            let m = rt.memory();
            (m.objects, m.inline_bytes) == (0, 0)
        }));
    }
}

#[test]
fn a_pending_task_keeps_its_argument_alive() {
    let rt = rt2();
    let g = gate();
    let big = rt.put(vec![1u8; 2 * MIB]).unwrap();
    let blocker = rt.task(gated).remote(g);
    let n = rt.task(len_after_gate).remote((&big, &blocker));
    drop(big);
    assert_eq!(
        rt.memory().store_bytes,
        2 * MIB as u64,
        "pinned by the pending task"
    );
    open(g);
    assert_eq!(n.get().unwrap(), 2 * MIB);
    assert_eq!(rt.memory().store_bytes, 0, "unpinned once the task has run");
    drop((n, blocker));
    // The worker that completed `blocker` may still be finishing with it.
    assert!(eventually(LONG, || rt.memory().objects == 0));
}

#[test]
fn task_results_are_freed_when_their_refs_drop() {
    let rt = rt2();
    let refs: Vec<ObjectRef<usize>> = (0..1000)
        .map(|_| rt.task(len).remote(vec![0u8; 10]))
        .collect();
    assert_eq!(rt.get(&refs, None).unwrap().iter().sum::<usize>(), 10_000);
    assert_eq!(rt.memory().objects, 1000);
    drop(refs);
    // A worker that has just reported a result may hold it for a moment longer.
    assert!(eventually(LONG, || rt.memory().objects == 0));
}

#[test]
fn refs_nested_in_objects_are_counted() {
    let rt = rt2();
    let inner: Vec<ObjectRef<i64>> = (1..=3).map(|i| rt.put(i).unwrap()).collect();
    let outer = rt.put(inner.clone()).unwrap();
    drop(inner);
    assert_eq!(
        rt.memory().objects,
        4,
        "the outer object holds the inner refs"
    );
    assert_eq!(rt.task(sum_refs).remote(&outer).get().unwrap(), 6);
    drop(outer);
    assert!(eventually(LONG, || rt.memory().objects == 0));
}

#[test]
fn a_ref_made_in_a_task_outlives_it() {
    let rt = rt2();
    let r: ObjectRef<ObjectRef<i64>> = rt.task(make_ref).remote(41);
    let inner = r.get().unwrap();
    drop(r);
    assert_eq!(inner.get().unwrap(), 41);
    drop(inner);
    assert!(eventually(LONG, || rt.memory().objects == 0));
}

#[test]
fn large_objects_are_shared_not_copied() {
    let rt = rt2();
    let r = rt.put(vec![3u8; 64 * MIB]).unwrap();
    let a = r.get_shared().unwrap();
    let b = r.get_shared().unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(rt.task(len).remote(&r).get().unwrap(), 64 * MIB);
}

#[test]
fn a_full_store_is_a_typed_error() {
    let rt = small_store(3 * MIB as u64);
    let a = rt.put(vec![0u8; 2 * MIB]).unwrap();
    match rt.put(vec![0u8; 2 * MIB]) {
        Err(Error::ObjectStoreFull {
            requested,
            capacity,
            ..
        }) => {
            assert_eq!((requested, capacity), (2 * MIB as u64, 3 * MIB as u64));
        }
        other => panic!("unexpected {other:?}"),
    }
    drop(a);
    assert!(
        rt.put(vec![0u8; 2 * MIB]).is_ok(),
        "room comes back when refs drop"
    );
}

#[test]
fn a_wrong_type_is_a_typed_error() {
    let rt = rt2();
    let r = rt.put(5u64).unwrap();
    let bytes = rt.encode(&r).unwrap();
    let wrong: ObjectRef<String> = rt.decode(&bytes).unwrap();
    match wrong.get() {
        Err(Error::TypeMismatch { expected, found }) => {
            assert!(expected.contains("String"));
            assert_eq!(found, "u64");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_ref_serializes_as_its_id() {
    let rt = rt2();
    let r = rt.put(vec![1i64, 2]).unwrap();
    let bytes = rt.encode(&r).unwrap();
    assert!(
        bytes.len() <= 20,
        "an id, not the value: {} bytes",
        bytes.len()
    );
    let back: ObjectRef<Vec<i64>> = rt.decode(&bytes).unwrap();
    assert_eq!(back, r);
    assert_eq!(back.get().unwrap(), vec![1, 2]);
    drop((r, back));
    assert!(matches!(
        rt.decode::<ObjectRef<Vec<i64>>>(&bytes),
        Err(Error::ObjectLost { .. })
    ));
    assert!(
        rmp_serde::from_slice::<ObjectRef<i64>>(&bytes).is_err(),
        "decoding needs a runtime"
    );
}

#[test]
fn refs_can_be_awaited() {
    let rt = rt2();
    let g = gate();
    let r = rt.task(gated).remote(g);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn({
        let r = r.clone();
        move || tx.send(actix_rt::System::new().block_on(async move { r.await }))
    });
    open(g);
    // Bounded: a future that is never woken fails the test instead of hanging it.
    assert_eq!(
        rx.recv_timeout(LONG).expect("the await finished").unwrap(),
        g
    );
}

// Timeouts too long to add to now (issue 7, defect 4).

#[test]
fn the_longest_timeouts_wait_like_none() {
    let rt = rt2();
    let g = gate();
    let r = rt.task(gated).remote(g);
    let opener = std::thread::spawn(move || open(g));
    assert_eq!(r.get_timeout(Duration::MAX), Ok(g));
    let g2 = gate();
    let refs = vec![rt.task(gated).remote(g2)];
    let opener2 = std::thread::spawn(move || open(g2));
    assert_eq!(rt.get(&refs, Some(Duration::MAX)), Ok(vec![g2]));
    let g3 = gate();
    let refs = vec![rt.task(gated).remote(g3)];
    let opener3 = std::thread::spawn(move || open(g3));
    let (ready, pending) = rt.wait(&refs, 1, Some(Duration::MAX)).unwrap();
    assert_eq!((ready.len(), pending.len()), (1, 0));
    for t in [opener, opener2, opener3] {
        t.join().unwrap();
    }
}

// Ids unique across runtimes (issue 7, defect 5).

#[test]
fn a_ref_decoded_in_another_runtime_names_its_real_owner() {
    let a = rt2();
    let b = rt2();
    let in_a = a.put(String::from("owned by a")).unwrap();
    let _in_b = b.put(String::from("owned by b")).unwrap();
    let bytes = a.encode(&in_a).unwrap();
    let seen_from_b: ObjectRef<String> = b.decode(&bytes).unwrap();
    assert_eq!(seen_from_b.get().unwrap(), "owned by a");
    assert_eq!(seen_from_b, in_a);
    drop(seen_from_b);
    a.shutdown();
    assert!(matches!(
        b.decode::<ObjectRef<String>>(&bytes),
        Err(Error::OwnerUnknown { .. })
    ));
}
