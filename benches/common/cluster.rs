//! The cluster's own measures, in the microbenchmark's cluster mode: object
//! transfer between processes beside the loopback TCP floor measured in the
//! same run, and 100,000 tasks over two node processes, round after round,
//! with each process's memory after each round.

use super::cpu::cpu_time;
use super::Bench;
use rayx::testing::Cluster;
use rayx::{NodeId, ObjectRef, RemoteFunction, Runtime};
use serde_bytes::ByteBuf;
use std::io::{Read, Write};
use std::time::Instant;

fn len_of(b: ByteBuf) -> usize {
    b.len()
}
fn put_bytes(n: usize) -> ObjectRef<ByteBuf> {
    let rt = Runtime::current().expect("in a task");
    rt.put(ByteBuf::from(vec![7u8; n])).expect("put")
}
fn len_of_shared(b: rayx::Bytes) -> usize {
    b.len()
}
fn put_shared(n: usize) -> ObjectRef<rayx::Bytes> {
    let rt = Runtime::current().expect("in a task");
    rt.put(rayx::Bytes::from(vec![7u8; n])).expect("put")
}
fn square(x: u64) -> u64 {
    x * x
}
rayx::remote!(len_of, put_bytes, len_of_shared, put_shared, square);

/// Bytes per second of a plain socket copy over loopback, best of three: one
/// thread writes `total` bytes in 4 MiB writes, another reads them in place
/// into one buffer, again and again. Both buffers are warm and asked for huge
/// pages as a transfer's are (no allocation, no page faults: the strictest
/// floor).
fn tcp_floor(total: usize) -> f64 {
    const BUF: usize = 64 << 20;
    const WRITE: usize = 4 << 20;
    let mut source = rayx_actors::pages::zeroed(BUF);
    source.fill(1);
    let mut sink = rayx_actors::pages::zeroed(BUF);
    sink.fill(0);
    let mut best = 0f64;
    for _ in 0..3 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let reader = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut got = 0;
            while got < total {
                let at = got % BUF;
                let n = s.read(&mut sink[at..]).expect("read");
                assert!(n > 0, "the writer closed early");
                got += n;
            }
            (got, sink)
        });
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        let _ = s.set_nodelay(true);
        let start = Instant::now();
        let mut sent = 0;
        while sent < total {
            let at = sent % BUF;
            let n = (total - sent).min(WRITE).min(BUF - at);
            s.write_all(&source[at..at + n]).expect("write");
            sent += n;
        }
        let got;
        (got, sink) = reader.join().expect("reader");
        assert_eq!(got, total);
        best = best.max(total as f64 / start.elapsed().as_secs_f64());
    }
    best
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

pub fn extras(bench: &Bench, mut cluster: Cluster) {
    let rt = cluster.driver().clone();
    let node = cluster.nodes()[0].id;
    if bench.selected("transfer") {
        let sizes: &[(usize, &str)] = if bench.quick {
            &[(1 << 20, "1 MB"), (16 << 20, "16 MB")]
        } else {
            &[(1 << 20, "1 MB"), (100 << 20, "100 MB"), (1 << 30, "1 GB")]
        };
        let floor_bytes = if bench.quick { 64 << 20 } else { 1 << 30 };
        let floor = tcp_floor(floor_bytes);
        println!(
            "transfer floor: loopback TCP socket copy {:.2} GB/s",
            floor / 1e9
        );
        for &(size, label) in sizes {
            // A small transfer is over in a millisecond: many rounds, so
            // that the best is not one the host's noise chose.
            let rounds = match size {
                s if s >= 1 << 30 => 2,
                s if s <= 1 << 20 => 50,
                _ if bench.quick => 2,
                _ => 5,
            };
            let one = Transfer {
                rt: &rt,
                node,
                size,
                label,
                rounds,
                floor,
            };
            // A `ByteBuf` is a `Vec`: a task or `get` that takes it by value
            // while the store still holds it gets a copy. `rayx::Bytes` is
            // shared: it is read where it landed.
            one.measure::<ByteBuf>("", len_of, put_bytes);
            one.measure::<rayx::Bytes>(" (rayx::Bytes, read in place)", len_of_shared, put_shared);
        }
    }
    if bench.selected("100k tasks over two nodes") {
        cluster.add_node().expect("a second node");
        let tasks: u64 = if bench.quick { 10_000 } else { 100_000 };
        let rounds = if bench.quick { 2 } else { 4 };
        for round in 1..=rounds {
            let start = Instant::now();
            let cpu0 = cpu_time();
            let refs: Vec<_> = (0..tasks).map(|i| rt.task(square).remote(i)).collect();
            let out = rt.get(&refs, None).expect("results");
            let took = start.elapsed().as_secs_f64();
            let cpu = (cpu_time() - cpu0).as_secs_f64();
            let wrong = out
                .iter()
                .enumerate()
                .filter(|(i, v)| **v != (*i as u64) * (*i as u64))
                .count();
            assert_eq!(wrong, 0, "every result correct");
            drop((refs, out));
            let rss: Vec<String> = cluster
                .nodes()
                .iter()
                .map(|n| format!("{} MiB", rss_kib(n.pid()) / 1024))
                .collect();
            let status = rt.cluster_status().expect("status");
            let objects: u64 = status.nodes.iter().map(|n| n.report.memory.objects).sum();
            println!(
                "{tasks} tasks over two nodes, round {round}: {:.2} s ({:.0} tasks/s), all correct; driver cpu {:.2} us/task; driver live heap {:.1} MiB, objects {}; node rss {}; nodes' objects at their last report {}",
                took,
                tasks as f64 / took,
                cpu * 1e6 / tasks as f64,
                super::LIVE.load(std::sync::atomic::Ordering::Relaxed) as f64 / (1 << 20) as f64,
                rt.memory().objects,
                rss.join(", "),
                objects
            );
        }
    }
}

/// One size of transfer, measured in both directions for a kind of buffer.
struct Transfer<'a> {
    rt: &'a Runtime,
    node: NodeId,
    size: usize,
    label: &'a str,
    rounds: usize,
    floor: f64,
}

impl Transfer<'_> {
    fn measure<T>(
        &self,
        name: &str,
        len_of: impl RemoteFunction<(T,), usize> + Copy,
        put_there: impl RemoteFunction<(usize,), ObjectRef<T>> + Copy,
    ) where
        T: rayx::Data + Clone + From<Vec<u8>> + AsRef<[u8]>,
    {
        let Transfer {
            rt,
            node,
            size,
            label,
            rounds,
            floor,
        } = *self;
        // Driver to node: put here, read there (pulled in chunks, decoded).
        let mut best = 0f64;
        let cpu0 = cpu_time();
        for _ in 0..rounds {
            let obj = rt.put(T::from(vec![3u8; size])).expect("put");
            let start = Instant::now();
            let n = rt
                .task(len_of)
                .node_affinity(node, false)
                .remote(&obj)
                .get()
                .expect("len");
            let took = start.elapsed().as_secs_f64();
            assert_eq!(n, size);
            best = best.max(size as f64 / took);
        }
        let cpu = (cpu_time() - cpu0).as_secs_f64() / rounds as f64;
        println!(
        "transfer {label} driver to node{name}: {:.2} GB/s ({:.0}% of the floor), driver cpu {:.3} s/object",
        best / 1e9,
        100.0 * best / floor,
        cpu
    );
        // Node to driver: a task there puts it (the node owns it) and returns
        // the ref; the driver gets the ref, then the value, timed alone.
        let mut best = 0f64;
        for _ in 0..rounds {
            let inner = rt
                .task(put_there)
                .node_affinity(node, false)
                .remote(size)
                .get()
                .expect("made");
            let start = Instant::now();
            let got = inner.get().expect("get");
            let took = start.elapsed().as_secs_f64();
            assert_eq!(got.as_ref().len(), size);
            best = best.max(size as f64 / took);
        }
        println!(
            "transfer {label} node to driver{name}: {:.2} GB/s ({:.0}% of the floor)",
            best / 1e9,
            100.0 * best / floor
        );
    }
}
