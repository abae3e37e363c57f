//! Throughput of a partitioned pipeline on this machine: the same backlog
//! of events through one `plumber worker`, then through two, on a 3-node
//! NATS cluster and Redis (all local), 64 partitions, the key-counting
//! guest, checkpoints every 500 ms, output to a JetStream stream.
//!
//! `cargo bench -p plumber-tests --bench cluster_throughput` (release
//! build of the worker). `PLUMBER_BENCH_EVENTS` sets the backlog (default
//! 200,000). Prints events/s in all and per worker, CPU time per event of
//! the workers, their peak memory, and the ratio of two workers to one;
//! checks the output exactly (each id once, counts 1..n, committed state).
//! Also how busy the machine's cores were: the workers share them with the
//! three NATS nodes and Redis, so on a small machine the servers bound the
//! pace, not the workers.
//!
//! Two rates: over the whole run (first output to last) and in the steady
//! middle (from 10% of the output to 90%), which leaves out the workers'
//! start (joining, taking leases, creating consumers) and the tail (the
//! last partitions finishing alone), both a large share of a short run.
//! `PLUMBER_BENCH_ROUNDS` (default 1) repeats one worker and two workers
//! alternately and prints the median ratios: on a machine shared with
//! other work a single round says little.

use std::time::{Duration, Instant};

use plumber_tests::cluster::{
    assert_oracle, oracle_setup, publish_events, wait_for_output, OutputProgress, WorkerProcess,
};

/// One run's figures.
struct Figures {
    workers: usize,
    events: u64,
    /// From the first output to the last.
    busy: Duration,
    /// Events per second from 10% of the output to 90%.
    steady_rate: f64,
    /// CPU seconds of the workers (user + system).
    cpu: f64,
    /// The largest peak resident set of a worker, in MiB.
    peak_mib: f64,
    /// How busy the machine's cores were meanwhile (0..1): the workers,
    /// the NATS nodes and Redis share them.
    machine_busy: f64,
    /// CPU seconds of the three NATS nodes and Redis while the output was
    /// written (user + system).
    servers_cpu: f64,
}

/// (busy, total) jiffies of all cores, from /proc/stat.
fn machine_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let numbers: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|n| n.parse().ok())
        .collect();
    let total: u64 = numbers.iter().sum();
    // idle and iowait
    let idle = numbers.get(3).copied().unwrap_or(0) + numbers.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// CPU seconds (user + system) of a live process, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis; utime and stime are
    // the 14th and 15th of the whole line.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

/// Peak resident set of a live process in MiB, from /proc.
fn peak_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Events per second between the first sample at or past 10% of `events`
/// in the output and the first at or past 90%; `None` with too few samples.
fn steady_rate(growth: &[(u64, u64)], events: u64) -> Option<f64> {
    let at = |share: u64| {
        growth
            .iter()
            .find(|(_, count)| *count * 10 >= events * share)
            .copied()
    };
    let ((from_us, from), (to_us, to)) = (at(1)?, at(9)?);
    (to_us > from_us).then(|| (to - from) as f64 * 1e6 / (to_us - from_us) as f64)
}

/// The median of `values` (NaN for none).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

async fn run(workers: usize, events: u64) -> Figures {
    let setup = oracle_setup(64).await;
    // The backlog first: the workers' pace is measured, not the producer's.
    publish_events(&setup.context, 0..events).await;
    let mut processes: Vec<WorkerProcess> = (1..=workers)
        .map(|n| WorkerProcess::start(&setup.path, &format!("w{n}"), setup.dir.path()))
        .collect();
    let logs = || String::new();
    wait_for_output(&setup.context, 1, Duration::from_secs(120), logs).await;
    let servers: Vec<u32> = setup
        .cluster
        .pids()
        .into_iter()
        .chain(setup.redis.pid())
        .collect();
    let servers_cpu = || servers.iter().map(|pid| cpu_seconds(*pid)).sum::<f64>();
    let first = Instant::now();
    let progress = OutputProgress::start(&setup.context);
    let jiffies_before = machine_jiffies();
    let servers_before = servers_cpu();
    wait_for_output(&setup.context, events, Duration::from_secs(1800), logs).await;
    let busy = first.elapsed();
    let steady_rate = steady_rate(&progress.growth().await, events).unwrap_or(f64::NAN);
    let jiffies_after = machine_jiffies();
    let servers_cpu = servers_cpu() - servers_before;
    let machine_busy = (jiffies_after.0 - jiffies_before.0) as f64
        / (jiffies_after.1 - jiffies_before.1).max(1) as f64;
    let pids: Vec<u32> = processes.iter().map(|p| p.child.id()).collect();
    let cpu = pids.iter().map(|pid| cpu_seconds(*pid)).sum();
    let peak = pids.iter().map(|pid| peak_mib(*pid)).fold(0.0, f64::max);
    for process in &mut processes {
        let status = process.terminate();
        assert!(status.success(), "{} exited {status}", process.id);
    }
    assert_oracle(&setup.context, &setup.pipeline, events).await;
    Figures {
        workers,
        events,
        busy,
        steady_rate,
        cpu,
        peak_mib: peak,
        machine_busy,
        servers_cpu,
    }
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not used here.
    let events: u64 = std::env::var("PLUMBER_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let rounds: usize = std::env::var("PLUMBER_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!("cluster throughput: {events} events, 64 partitions, {cores} cores, 3 NATS nodes and Redis on this machine, {rounds} round(s)");
    println!(
        "{:>5} {:>7} {:>12} {:>14} {:>18} {:>16} {:>16} {:>14} {:>20}",
        "round",
        "workers",
        "events/s",
        "steady ev/s",
        "events/s/worker",
        "CPU µs/event",
        "peak MiB/worker",
        "machine busy",
        "servers CPU µs/event"
    );
    let (mut whole_ratios, mut steady_ratios) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let mut rates = Vec::new();
        for workers in [1, 2] {
            let figures = run(workers, events).await;
            let rate = figures.events as f64 / figures.busy.as_secs_f64();
            println!(
                "{:>5} {:>7} {:>12.0} {:>14.0} {:>18.0} {:>16.1} {:>16.1} {:>13.0}% {:>20.1}",
                round,
                figures.workers,
                rate,
                figures.steady_rate,
                rate / figures.workers as f64,
                figures.cpu * 1e6 / figures.events as f64,
                figures.peak_mib,
                figures.machine_busy * 100.0,
                figures.servers_cpu * 1e6 / figures.events as f64
            );
            rates.push((rate, figures.steady_rate));
        }
        let (whole, steady) = (rates[1].0 / rates[0].0, rates[1].1 / rates[0].1);
        println!("round {round}: two workers / one: {whole:.2}x over the whole run, {steady:.2}x in the steady middle");
        whole_ratios.push(whole);
        steady_ratios.push(steady);
    }
    println!(
        "two workers / one, median of {rounds}: {:.2}x over the whole run, {:.2}x in the steady middle",
        median(&mut whole_ratios),
        median(&mut steady_ratios)
    );
}
