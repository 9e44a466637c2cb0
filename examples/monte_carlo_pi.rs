//! Parallel Monte Carlo estimate of π: sampling tasks report to an aggregating
//! actor, which the driver asks for the total.
//!
//! Run: `cargo run --release --example monte_carlo_pi [tasks] [samples_per_task]`

use rayx::prelude::*;
use std::time::Instant;

/// Counts samples that land inside the unit circle (xorshift64*, no deps).
fn sample(seed: u64, samples: u64, tally: ActorHandle<Tally>) -> u64 {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    };
    let inside = (0..samples)
        .filter(|_| {
            let (x, y) = (next(), next());
            x * x + y * y <= 1.0
        })
        .count() as u64;
    // Wait for the tally to take the report, so once every task is done the
    // tally is complete.
    if let Err(e) = tally.call(Report { inside, samples }).get() {
        eprintln!("report lost: {e}");
    }
    inside
}
rayx::remote!(sample);

/// Aggregates reports from every task.
#[derive(Default)]
struct Tally {
    inside: u64,
    samples: u64,
    reports: u64,
}
impl Actor for Tally {}

#[derive(Serialize, Deserialize)]
struct Report {
    inside: u64,
    samples: u64,
}
impl Message for Report {
    type Reply = ();
}
impl Handler<Report> for Tally {
    fn handle(&mut self, r: Report, _: &mut ActorContext<Self>) {
        self.inside += r.inside;
        self.samples += r.samples;
        self.reports += 1;
    }
}

#[derive(Serialize, Deserialize)]
struct Total;
impl Message for Total {
    type Reply = (u64, u64, u64);
}
impl Handler<Total> for Tally {
    fn handle(&mut self, _: Total, _: &mut ActorContext<Self>) -> (u64, u64, u64) {
        (self.inside, self.samples, self.reports)
    }
}

fn main() -> rayx::Result<()> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u64>());
    let tasks = args.next().and_then(|a| a.ok()).unwrap_or(200);
    let per_task = args.next().and_then(|a| a.ok()).unwrap_or(1_000_000);

    let rt = rayx::init()?;
    let start = Instant::now();
    let tally = rt.actor(Tally::default).name("tally").spawn()?;
    let refs: Vec<ObjectRef<u64>> = (0..tasks)
        .map(|seed| rt.task(sample).remote((seed, per_task, tally.clone())))
        .collect();
    let inside_by_task: u64 = rt.get(&refs, None)?.into_iter().sum();
    let (inside, samples, reports) = tally.call(Total).get()?;
    let elapsed = start.elapsed();

    if (inside, samples, reports) != (inside_by_task, tasks * per_task, tasks) {
        return Err(rayx::Error::InvalidArgument(format!(
            "tally disagrees with the tasks: {inside}/{samples} in {reports} reports vs {inside_by_task}"
        )));
    }
    let pi = 4.0 * inside as f64 / samples as f64;
    println!(
        "pi ~= {pi:.6} from {} samples in {tasks} tasks on {} workers",
        tasks * per_task,
        rt.num_workers()
    );
    println!(
        "time: {:.3} s ({:.1} M samples/s)",
        elapsed.as_secs_f64(),
        (tasks * per_task) as f64 / elapsed.as_secs_f64() / 1e6
    );
    Ok(())
}
