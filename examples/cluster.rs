//! A cluster on one machine: tasks, an actor, a large object and a placement
//! group spread over node processes, each line saying which node (and process)
//! ran it.
//!
//! By itself it starts its own cluster — a head here and two node processes
//! that re-run this binary:
//!
//! ```sh
//! cargo run --release --example cluster
//! ```
//!
//! Or join a cluster started by hand (README, "Run a cluster"): with
//! `RAYX_ADDRESS` set it is the driver; with `RAYX_ROLE=node` as well, it is
//! a worker node and serves until the head stops it.

use rayx::prelude::*;
use rayx::testing::Cluster;
use std::collections::BTreeMap;

/// Which node and process ran task `i`, and what it computed.
fn work(i: u64) -> (u64, u64, u32, u64) {
    let node = Runtime::current().expect("in a task").node_id();
    let sum = (0..=i * 100_000).fold(0u64, |s, k| s.wrapping_add(k * k));
    (i, node.0, std::process::id(), sum)
}

fn checksum(data: serde_bytes::ByteBuf) -> (usize, u64, u64) {
    let sum = data
        .iter()
        .fold(0u64, |s, &b| s.wrapping_mul(31).wrapping_add(b as u64));
    let node = Runtime::current().expect("in a task").node_id();
    (data.len(), sum, node.0)
}

rayx::remote!(work, checksum);

/// A counter that says where it lives.
struct Tally {
    n: u64,
}
impl Tally {
    fn new(start: u64) -> Tally {
        Tally { n: start }
    }
}
impl Actor for Tally {}

#[derive(Serialize, Deserialize)]
struct Add(u64);
impl Message for Add {
    type Reply = (u64, u32);
}
impl Handler<Add> for Tally {
    fn handle(&mut self, Add(k): Add, _: &mut ActorContext<Self>) -> (u64, u32) {
        self.n += k;
        (self.n, std::process::id())
    }
}
rayx::remote_actor!(Tally, Tally::new, [Add]);

fn short(node: u64) -> String {
    format!("{node:016x}")[..6].to_string()
}

fn main() -> rayx::Result<()> {
    // A node process (RAYX_ROLE=node) serves here and never returns.
    rayx::testing::serve_if_node();
    let own_cluster;
    let rt = if std::env::var("RAYX_ADDRESS").is_ok() {
        let rt = rayx::init()?;
        let want: usize = std::env::var("RAYX_NODES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(2);
        // The driver, the head and `want` worker nodes.
        if !rt.wait_for_nodes(want + 2, Duration::from_secs(30)) {
            eprintln!("only {} nodes joined; going on", rt.nodes().len());
        }
        rt
    } else {
        println!("no RAYX_ADDRESS: starting a head here and two node processes");
        own_cluster = Cluster::start(2)?;
        own_cluster.driver().clone()
    };
    println!("\nnodes of the cluster ({}):", rt.nodes().len());
    for n in rt.nodes() {
        let me = if n.id == rt.node_id() {
            "  <- this driver"
        } else {
            ""
        };
        let head = if n.head { " (head)" } else { "" };
        println!(
            "  {} at {:<21} {} CPUs{head}{me}",
            short(n.id.0),
            n.address,
            n.cpus
        );
    }

    println!("\n12 tasks, spread over the nodes:");
    let refs: Vec<_> = (0..12)
        .map(|i| rt.task(work).scheduling(Scheduling::Spread).remote(i))
        .collect();
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for (i, node, pid, sum) in rt.get(&refs, None)? {
        println!(
            "  task {i:>2} ran on node {} (pid {pid}): {sum}",
            short(node)
        );
        *per_node.entry(short(node)).or_default() += 1;
    }
    println!("  tasks per node: {per_node:?}");

    // Another node than this driver, for the actor and the large object.
    let other = rt
        .nodes()
        .into_iter()
        .find(|n| n.id != rt.node_id() && n.cpus > 0.0)
        .map(|n| n.id)
        .unwrap_or(rt.node_id());
    let tally = rt
        .actor_of(Tally::new, 100)
        .name("tally")
        .node_affinity(other, false)
        .spawn()?;
    let (n, pid) = tally.call(Add(5)).get()?;
    println!(
        "\nthe actor `tally` lives on node {} (pid {pid}); 100 + 5 = {n}",
        short(tally.node_id().0)
    );

    let data: Vec<u8> = (0..64u32 << 20).map(|i| (i % 251) as u8).collect();
    let expect = data
        .iter()
        .fold(0u64, |s, &b| s.wrapping_mul(31).wrapping_add(b as u64));
    let big = rt.put(serde_bytes::ByteBuf::from(data))?;
    let (len, sum, node) = rt
        .task(checksum)
        .node_affinity(other, false)
        .remote(&big)
        .get()?;
    println!(
        "a 64 MiB object put here was read on node {}: {len} bytes, checksum {}",
        short(node),
        if sum == expect { "intact" } else { "WRONG" }
    );
    assert_eq!(sum, expect);

    // A placement group: one CPU reserved on each node that has CPUs, a
    // bundle per node (STRICT_SPREAD), and a task run in each bundle.
    let workers = rt.nodes().iter().filter(|n| n.cpus >= 1.0).count().max(1);
    let pg = rt
        .placement_group(vec![[("CPU", 1.0)]; workers])
        .strategy(rayx::PlacementStrategy::StrictSpread)
        .create()?;
    pg.ready().get_timeout(Duration::from_secs(30))?;
    println!(
        "
a placement group of {workers} bundles, one CPU each, a node each:"
    );
    for bundle in 0..workers {
        let (_, node, pid, _) = rt
            .task(work)
            .placement_group(&pg, Some(bundle))
            .remote(1)
            .get()?;
        println!(
            "  bundle {bundle}: its task ran on node {} (pid {pid})",
            short(node)
        );
    }
    rt.remove_placement_group(&pg)?;
    Ok(())
}
