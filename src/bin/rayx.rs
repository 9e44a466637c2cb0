//! The `rayx` command: start a standalone head, show a cluster's state, stop it.
//!
//! ```text
//! rayx start --head [--port P] [--host H] [--no-auth] [--storage F|none] [--tls]
//!                                           a head that serves until stopped
//! rayx status [--address A]                 nodes, actors, placement groups, objects
//! rayx drain NODE [--timeout S] [--address A]  a worker node leaves in order
//! rayx stop [--address A]                   stops every node and the head
//! ```
//! `--address` defaults to `RAYX_ADDRESS`. The cluster token is `RAYX_TOKEN`,
//! else the file `RAYX_TOKEN_FILE`, else `~/.rayx/token`, which
//! `rayx start --head` makes (readable by its user only) when there is none.

use rayx_actors::cluster::head::left_in_order;
use rayx_actors::cluster::tls;
use rayx_actors::cluster::wire::{Answer, Ask, ClusterStatus, JobState, NodeStatus};
use rayx_actors::cluster::{admin_ask, auth};
use rayx_actors::ids::NodeId;
use std::process::ExitCode;

const USAGE: &str = "usage:
  rayx start --head [--port P] [--host H] [--no-auth] [--storage FILE|none] [--tls]
                                            start a head here; it serves until `rayx stop`;
                                            its tables live in FILE (default
                                            ~/.rayx/head-PORT.redb): killed and started
                                            again on it, the head has its cluster back
  rayx status [--address HOST:PORT]         the cluster's nodes, actors and objects
  rayx drain NODE [--timeout SECONDS] [--address HOST:PORT]
                                            worker node NODE (as `rayx status` shows it)
                                            leaves in order, as on SIGTERM: its work
                                            finishes, then it stops (within SECONDS, 20)
  rayx stop [--address HOST:PORT]           stop every node and the head
(--address defaults to RAYX_ADDRESS; the cluster token is RAYX_TOKEN, else the
file RAYX_TOKEN_FILE, else ~/.rayx/token, which `start --head` makes if missing;
--no-auth, loopback only: every process then needs RAYX_AUTH=none; --tls encrypts
every connection with ~/.rayx/cluster.crt and cluster.key, made if missing: every
process then needs RAYX_TLS=1, or RAYX_TLS_CERT and RAYX_TLS_KEY)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rayx: {e}");
            ExitCode::FAILURE
        }
    }
}

fn flag(args: &[String], name: &str) -> Result<Option<String>, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(None),
        Some(i) => args
            .get(i + 1)
            .cloned()
            .map(Some)
            .ok_or_else(|| format!("{name} needs a value\n{USAGE}")),
    }
}

fn address(args: &[String]) -> Result<String, String> {
    flag(args, "--address")?
        .or_else(|| std::env::var("RAYX_ADDRESS").ok())
        .ok_or_else(|| format!("no address: pass --address or set RAYX_ADDRESS\n{USAGE}"))
}

fn run(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("start") => {
            if !args.iter().any(|a| a == "--head") {
                return Err(format!(
                    "only a head starts from this binary: worker nodes run your own binary \
                     with RAYX_ROLE=node and RAYX_ADDRESS set\n{USAGE}"
                ));
            }
            let port = flag(args, "--port")?.unwrap_or_else(|| "6379".to_string());
            let host = flag(args, "--host")?.unwrap_or_else(|| "127.0.0.1".to_string());
            let mut builder = rayx::Builder::new()
                .num_workers(1)
                .num_cpus(0.0)
                .standalone_head()
                .listen(format!("{host}:{port}"));
            let storage = match flag(args, "--storage")? {
                Some(s) if s == "none" => None,
                Some(s) => Some(std::path::PathBuf::from(s)),
                None => auth::default_path()
                    .and_then(|p| p.parent().map(|d| d.join(format!("head-{port}.redb")))),
            };
            if let Some(path) = &storage {
                builder = builder.head_storage(path);
            }
            let tls_files = if args.iter().any(|a| a == "--tls") {
                let files = tls::files_from_env()
                    .or_else(tls::default_files)
                    .ok_or("--tls: there is no home folder for the certificate")?;
                if tls::generate(&files).map_err(|e| e.to_string())? {
                    println!(
                        "made the cluster certificate {} and its key {} (readable by this user \
                         only; every node needs both)",
                        files.cert.display(),
                        files.key.display()
                    );
                }
                builder = builder.tls(&files.cert, &files.key);
                Some(files)
            } else {
                None
            };
            let no_auth = args.iter().any(|a| a == "--no-auth");
            if no_auth {
                builder = builder.no_auth();
            }
            let rt = builder.start().map_err(|e| e.to_string())?;
            let address = rt.cluster_address().unwrap_or_default();
            println!("rayx head started at {address}");
            if let Some(path) = &storage {
                println!("its tables: {} (removed by `rayx stop`)", path.display());
            }
            if let Some(files) = &tls_files {
                println!(
                    "TLS: on (nodes join with RAYX_TLS_CERT={} RAYX_TLS_KEY={}, or RAYX_TLS=1 here)",
                    files.cert.display(),
                    files.key.display()
                );
            }
            match (rt.cluster_token(), auth::default_path()) {
                (None, _) => println!("authentication is off: loopback only"),
                (Some(_), Some(path)) if std::env::var("RAYX_TOKEN").is_err() => println!(
                    "cluster token: {} (readable by this user only; other machines need a copy, \
                     or RAYX_TOKEN)",
                    path.display()
                ),
                (Some(_), _) => println!("cluster token: from RAYX_TOKEN"),
            }
            // Every process of a TLS cluster needs the certificate, the
            // `rayx` commands included.
            let tls_env = if tls_files.is_some() {
                "RAYX_TLS=1 "
            } else {
                ""
            };
            println!("join it with: {tls_env}RAYX_ADDRESS={address} <your binary>");
            println!("stop it with: {tls_env}rayx stop --address {address}");
            rt.serve_until_stopped();
            Ok(())
        }
        Some("status") => {
            let address = address(args)?;
            let token = auth::from_env(false).map_err(|e| e.to_string())?;
            let tls = tls::files_from_env();
            match admin_ask(&address, token.as_deref(), tls.as_ref(), Ask::Status)
                .map_err(|e| e.to_string())?
            {
                Answer::Status(s) => {
                    print!("{}", render(&address, &s));
                    Ok(())
                }
                other => Err(format!("unexpected answer: {other:?}")),
            }
        }
        Some("drain") => {
            let node: NodeId = args
                .get(1)
                .filter(|a| !a.starts_with("--"))
                .ok_or_else(|| format!("which node?\n{USAGE}"))?
                .parse()?;
            let seconds = match flag(args, "--timeout")? {
                Some(s) => s
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .ok_or_else(|| format!("--timeout takes seconds, not {s:?}"))?,
                None => 20.0,
            };
            let address = address(args)?;
            let token = auth::from_env(false).map_err(|e| e.to_string())?;
            let tls = tls::files_from_env();
            let timeout_ms = (seconds * 1000.0) as u64;
            admin_ask(
                &address,
                token.as_deref(),
                tls.as_ref(),
                Ask::DrainNode { node, timeout_ms },
            )
            .map_err(|e| e.to_string())?;
            println!("rayx: {node} is draining (within {seconds} s)");
            Ok(())
        }
        Some("stop") => {
            let address = address(args)?;
            let token = auth::from_env(false).map_err(|e| e.to_string())?;
            let tls = tls::files_from_env();
            admin_ask(&address, token.as_deref(), tls.as_ref(), Ask::StopCluster)
                .map_err(|e| e.to_string())?;
            println!("rayx: the cluster at {address} is stopping");
            Ok(())
        }
        _ => Err(USAGE.to_string()),
    }
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

fn render(address: &str, s: &ClusterStatus) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let left = |n: &NodeStatus| !n.alive && n.cause.as_deref().is_some_and(left_in_order);
    let alive = s.nodes.iter().filter(|n| n.alive).count();
    let gone = s.nodes.iter().filter(|n| left(n)).count();
    let _ = writeln!(
        out,
        "cluster at {address}: {alive} nodes alive, {} dead, {gone} left",
        s.nodes.len() - alive - gone
    );
    let _ = writeln!(
        out,
        "{:<24} {:<22} {:<8} {:>5} {:>5} {:>7} {:>8} {:>10}",
        "NODE", "ADDRESS", "STATE", "CPUS", "LOAD", "ACTORS", "OBJECTS", "MEMORY"
    );
    for n in &s.nodes {
        let id = format!("{}{}", n.info.id, if n.info.head { "*" } else { "" });
        let r = &n.report;
        let _ = writeln!(
            out,
            "{:<24} {:<22} {:<8} {:>5} {:>5} {:>7} {:>8} {:>10}",
            id,
            n.info.address,
            if n.alive && n.draining {
                "draining"
            } else if n.alive {
                "alive"
            } else if left(n) {
                "left"
            } else {
                "dead"
            },
            n.info.cpus,
            r.load,
            r.actors,
            r.memory.objects,
            bytes(r.memory.inline_bytes + r.memory.store_bytes),
        );
        if let Some(cause) = n.cause.as_ref().filter(|_| !left(n)) {
            let _ = writeln!(out, "    died: {cause}");
        }
        if !n.info.resources.is_empty() {
            let _ = writeln!(out, "    resources: {}", amounts(&n.info.resources));
        }
    }
    let _ = writeln!(out, "(* the head)");
    if !s.actors.is_empty() {
        let _ = writeln!(out, "actors:");
        for (place, name) in &s.actors {
            let name = name
                .as_ref()
                .map(|(ns, n)| format!(" named {ns}/{n}"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  {} {} on {}{name}",
                place.actor, place.type_name, place.node
            );
        }
    }
    if !s.groups.is_empty() {
        let _ = writeln!(out, "placement groups:");
        let mut groups = s.groups.clone();
        groups.sort_by_key(|g| g.id);
        for g in &groups {
            let name = g
                .name
                .as_ref()
                .map(|(ns, n)| format!(" named {ns}/{n}"))
                .unwrap_or_default();
            let _ = writeln!(out, "  {} {:?} {:?}{name}", g.id, g.state, g.strategy);
            for (i, (b, n)) in g.bundles.iter().zip(&g.nodes).enumerate() {
                let at = n.map_or_else(|| "not placed".to_string(), |n| format!("on {n}"));
                let _ = writeln!(out, "    bundle {i}: {} {at}", amounts(b));
            }
        }
    }
    if !s.jobs.is_empty() {
        let _ = writeln!(out, "jobs:");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        for j in &s.jobs {
            let took = |end: u64| end.saturating_sub(j.started) as f64 / 1000.0;
            let state = match (&j.state, j.ended) {
                (JobState::Running, _) => format!("running for {:.1} s", took(now)),
                (JobState::Finished, end) => {
                    format!("finished after {:.1} s", took(end.unwrap_or(now)))
                }
                (JobState::Failed(why), end) => {
                    format!("failed after {:.1} s: {why}", took(end.unwrap_or(now)))
                }
            };
            let _ = writeln!(out, "  {} (driver at {}): {state}", j.id, j.address);
        }
    }
    if !s.rejections.is_empty() {
        let _ = writeln!(out, "connections closed for bad input:");
        for (reason, n) in &s.rejections {
            let _ = writeln!(out, "  {n} × {reason}");
        }
    }
    out
}

/// Resources as `name=amount` pairs.
fn amounts(r: &rayx::Resources) -> String {
    r.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}
