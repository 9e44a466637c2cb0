//! The cluster's own measures, in the microbenchmark's cluster mode: object
//! transfer between processes beside the loopback TCP floor measured in the
//! same run, and 100,000 tasks over two node processes, round after round,
//! with each process's memory after each round.

use super::cpu::cpu_time;
use super::Bench;
use rayx::testing::Cluster;
use serde_bytes::ByteBuf;
use std::io::{Read, Write};
use std::time::Instant;

fn make_bytes(n: usize) -> ByteBuf {
    ByteBuf::from(vec![7u8; n])
}
fn len_of(b: ByteBuf) -> usize {
    b.len()
}
fn make_len(n: usize) -> usize {
    make_bytes(n).len()
}
fn square(x: u64) -> u64 {
    x * x
}
rayx::remote!(make_bytes, len_of, make_len, square);

/// Bytes per second of a plain socket copy over loopback: one thread writes
/// `total` bytes in 4 MiB writes from one buffer, another reads them into
/// one 4 MiB buffer, again and again (no allocation: the strictest floor).
fn tcp_floor(total: usize) -> f64 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 4 << 20];
        let mut got = 0;
        while got < total {
            let n = s.read(&mut buf).expect("read");
            assert!(n > 0, "the writer closed early");
            got += n;
        }
        got
    });
    let chunk = vec![1u8; 4 << 20];
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    let _ = s.set_nodelay(true);
    let start = Instant::now();
    let mut left = total;
    while left > 0 {
        let n = left.min(chunk.len());
        s.write_all(&chunk[..n]).expect("write");
        left -= n;
    }
    assert_eq!(reader.join().expect("reader"), total);
    total as f64 / start.elapsed().as_secs_f64()
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
            let rounds = if size >= 1 << 30 || bench.quick { 2 } else { 5 };
            // Driver to node: put here, read there (pulled in chunks, decoded).
            let mut best = 0f64;
            let cpu0 = cpu_time();
            for _ in 0..rounds {
                let obj = rt.put(ByteBuf::from(vec![3u8; size])).expect("put");
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
                "transfer {label} driver to node: {:.2} GB/s ({:.0}% of the floor), driver cpu {:.3} s/object",
                best / 1e9,
                100.0 * best / floor,
                cpu
            );
            // Node to driver: made there, got here. The time to make it there
            // (a task that makes it and returns its length) is subtracted.
            let start = Instant::now();
            for _ in 0..rounds {
                rt.task(make_len)
                    .node_affinity(node, false)
                    .remote(size)
                    .get()
                    .expect("made");
            }
            let make = start.elapsed().as_secs_f64() / rounds as f64;
            let mut best = 0f64;
            for _ in 0..rounds {
                let start = Instant::now();
                let got = rt
                    .task(make_bytes)
                    .node_affinity(node, false)
                    .remote(size)
                    .get()
                    .expect("get");
                let took = start.elapsed().as_secs_f64();
                assert_eq!(got.len(), size);
                best = best.max(size as f64 / (took - make).max(1e-9));
            }
            println!(
                "transfer {label} node to driver: {:.2} GB/s ({:.0}% of the floor)",
                best / 1e9,
                100.0 * best / floor
            );
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
