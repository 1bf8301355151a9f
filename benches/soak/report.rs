//! Samples, the table of them, and the verdict.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::args::Args;
use crate::load::Stats;
use crate::nodes::{Fleet, LogSummary};
use crate::sample;

/// When a row was taken.
#[derive(Debug, Clone)]
pub enum Moment {
    /// A phase boundary (ramp done, churn stopped, all closed).
    Event(&'static str),
    /// During churn: seconds since it started; since the previous sample, connections
    /// completed per second, their mean and longest duration (ms).
    Churn {
        at: Duration,
        rate: f64,
        mean_ms: f64,
        max_ms: f64,
    },
}

#[derive(Debug, Clone)]
pub struct NodeSample {
    pub rss_kib: Option<u64>,
    pub descriptors: Option<usize>,
    pub close_wait: usize,
    /// User plus system CPU time so far.
    pub cpu: Option<Duration>,
    /// Time its threads waited for a CPU so far.
    pub run_delay: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct Row {
    pub moment: Moment,
    pub churn_failed: u64,
    pub churn_skipped: u64,
    pub tunnels_alive: u64,
    pub tunnels_lost: u64,
    pub nodes: Vec<NodeSample>,
    /// `osgate_cleartext_despite_policy_total`, summed over the nodes.
    pub cleartext: Option<f64>,
}

impl Row {
    pub fn take(fleet: &Fleet, stats: &Stats, moment: Moment) -> Row {
        // Blocking reads of /proc, `ss` and /metrics: let the runtime move other tasks away.
        tokio::task::block_in_place(|| {
            let close_wait = sample::close_wait_by_pid();
            let nodes = fleet
                .nodes
                .iter()
                .map(|node| NodeSample {
                    rss_kib: sample::rss_kib(node.pid()),
                    descriptors: sample::descriptors(node.pid()),
                    close_wait: close_wait.get(&node.pid()).copied().unwrap_or(0),
                    cpu: sample::cpu_time(node.pid()),
                    run_delay: sample::run_delay(node.pid()),
                })
                .collect();
            let cleartext = fleet
                .nodes
                .iter()
                .map(|n| sample::metric(n.metrics, "osgate_cleartext_despite_policy_total"))
                .sum();
            Row {
                moment,
                churn_failed: stats.churn_failed.load(Relaxed),
                churn_skipped: stats.churn_skipped.load(Relaxed),
                tunnels_alive: stats.tunnels_alive.load(Relaxed),
                tunnels_lost: stats.tunnels_lost.load(Relaxed),
                nodes,
                cleartext,
            }
        })
    }

    /// One markdown table row.
    pub fn line(&self) -> String {
        let (when, rate, latency) = match &self.moment {
            Moment::Event(what) => (what.to_string(), String::new(), String::new()),
            Moment::Churn {
                at,
                rate,
                mean_ms,
                max_ms,
            } => (
                at.as_secs().to_string(),
                format!("{rate:.0}"),
                format!("{mean_ms:.0} / {max_ms:.0}"),
            ),
        };
        let mut cells = vec![
            when,
            rate,
            latency,
            self.churn_failed.to_string(),
            self.churn_skipped.to_string(),
            self.tunnels_alive.to_string(),
        ];
        cells.extend(self.nodes.iter().map(|n| mib(n.rss_kib)));
        cells.extend(self.nodes.iter().map(|n| opt(n.descriptors)));
        let close_wait: usize = self.nodes.iter().map(|n| n.close_wait).sum();
        cells.push(close_wait.to_string());
        cells.push(self.cleartext.map_or("?".into(), |c| format!("{c:.0}")));
        format!("| {} |", cells.join(" | "))
    }
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

fn opt(n: Option<usize>) -> String {
    n.map_or("?".into(), |n| n.to_string())
}

pub fn header(fleet_names: &[String]) -> String {
    let mut cells: Vec<String> = [
        "t (s)",
        "churn/s",
        "churn ms mean / max",
        "churn failed",
        "skipped",
        "tunnels",
    ]
    .map(String::from)
    .into();
    cells.extend(fleet_names.iter().map(|n| format!("{n} RSS MiB")));
    cells.extend(fleet_names.iter().map(|n| format!("{n} fds")));
    cells.push("CLOSE_WAIT".into());
    cells.push("cleartext".into());
    let rule: Vec<&str> = cells.iter().map(|_| "---:").collect();
    format!("| {} |\n|{}|", cells.join(" | "), rule.join("|"))
}

/// (min, max, spread in % of min) of the samples after warm-up.
fn spread(values: impl Iterator<Item = f64>) -> Option<(f64, f64, f64)> {
    let values: Vec<f64> = values.collect();
    let min = values.iter().copied().reduce(f64::min)?;
    let max = values.iter().copied().reduce(f64::max)?;
    Some((min, max, (max - min) / min.max(1.0) * 100.0))
}

pub fn print(args: &Args, names: &[String], rows: &[Row], logs: &[LogSummary], stats: &Stats) {
    println!(
        "soak: {} tunnels over {} pair(s), {} new connections/s, {} s of churn, io = {}, samples every {} s\n",
        args.tunnels,
        args.pairs,
        args.rate,
        args.duration.as_secs(),
        args.io,
        args.sample_every.as_secs()
    );
    println!("{}", header(names));
    for row in rows {
        println!("{}", row.line());
    }
    let settled: Vec<&Row> = rows
        .iter()
        .filter(|r| matches!(r.moment, Moment::Churn { at, .. } if at > args.warmup))
        .collect();
    println!(
        "\nverdict over the {} samples after {} s of warm-up:",
        settled.len(),
        args.warmup.as_secs()
    );
    let mut flat = true;
    for (i, name) in names.iter().enumerate() {
        let rss = spread(
            settled
                .iter()
                .filter_map(|r| r.nodes[i].rss_kib)
                .map(|k| k as f64 / 1024.0),
        );
        let fds = spread(
            settled
                .iter()
                .filter_map(|r| r.nodes[i].descriptors)
                .map(|d| d as f64),
        );
        if let Some((min, max, pct)) = rss {
            flat &= pct <= 5.0;
            println!("  {name} RSS MiB: {min:.1} .. {max:.1}, spread {pct:.1}%");
        }
        // Churn exchanges in flight hold descriptors too: the spread follows their latency.
        if let Some((min, max, pct)) = fds {
            println!(
                "  {name} descriptors: {min:.0} .. {max:.0}, spread {pct:.1}% (in-flight churn included)"
            );
        }
    }
    print_cpu(names, rows);
    // Summed over the nodes, as in the table's column.
    let close_wait = |r: &&Row| r.nodes.iter().map(|n| n.close_wait).sum::<usize>();
    let during = rows
        .iter()
        .filter(|r| matches!(r.moment, Moment::Churn { .. }))
        .map(|r| close_wait(&r))
        .max()
        .unwrap_or(0);
    let left = rows
        .iter()
        .filter(|r| matches!(r.moment, Moment::Event(_)))
        .map(|r| close_wait(&r))
        .max()
        .unwrap_or(0);
    print_baseline(names, rows);
    let cleartext = rows.iter().filter_map(|r| r.cleartext).fold(0.0, f64::max);
    let last = rows.last();
    let rates: Vec<f64> = rows
        .iter()
        .filter_map(|r| match r.moment {
            Moment::Churn { rate, .. } => Some(rate),
            Moment::Event(_) => None,
        })
        .collect();
    let longest = rows
        .iter()
        .filter_map(|r| match r.moment {
            Moment::Churn { max_ms, .. } => Some(max_ms),
            Moment::Event(_) => None,
        })
        .fold(0.0, f64::max);
    let mean = rates.iter().sum::<f64>() / rates.len().max(1) as f64;
    println!("  RSS flat within 5% after warm-up: {}", yes(flat));
    println!(
        "  CLOSE_WAIT on node sockets: {left} left when churn stopped and after closing; \
         at most {during} in a churn sample (exchanges in flight, client half-closed)"
    );
    println!("  osgate_cleartext_despite_policy_total, highest: {cleartext:.0}");
    println!(
        "  churn: {} completed ({mean:.0}/s on average, longest {longest:.0} ms), {} failed, \
         {} skipped (over {} in flight)",
        stats.churn_ok.load(Relaxed),
        last.map_or(0, |r| r.churn_failed),
        last.map_or(0, |r| r.churn_skipped),
        args.max_in_flight()
    );
    println!(
        "  tunnels: {} opened, {} lost, {} pings answered",
        args.tunnels,
        last.map_or(0, |r| r.tunnels_lost),
        stats.pings_ok.load(Relaxed)
    );
    for log in logs {
        println!("  {} log: {} WARN/ERROR lines", log.node, log.count);
        for (kind, n) in &log.kinds {
            println!("    {n} × {kind}");
        }
    }
    if let Ok(errors) = stats.errors.lock() {
        for e in errors.iter() {
            println!("  load error: {e}");
        }
    }
}

/// Each node's CPU use over the churn (first to last churn sample), in % of one core.
/// Descriptors are the exact leak check: back to the count with only the tunnels open once
/// churn stops, and to the idle count once they close.
fn print_baseline(names: &[String], rows: &[Row]) {
    let at = |label: &str| {
        rows.iter()
            .find(|r| matches!(r.moment, Moment::Event(l) if l == label))
    };
    let (Some(idle), Some(open), Some(stopped), Some(closed)) = (
        at("idle"),
        at("tunnels open"),
        at("churn stopped"),
        at("all closed"),
    ) else {
        return;
    };
    let mut back = true;
    for (i, name) in names.iter().enumerate() {
        let [idle, open, stopped, closed] =
            [idle, open, stopped, closed].map(|r| r.nodes[i].descriptors);
        back &= stopped == open && closed == idle;
        println!(
            "  {name} descriptors: idle {}, tunnels open {}, churn stopped {}, all closed {}",
            opt(idle),
            opt(open),
            opt(stopped),
            opt(closed)
        );
    }
    println!("  descriptors back to their baselines: {}", yes(back));
}

fn print_cpu(names: &[String], rows: &[Row]) {
    let churn: Vec<(&Row, Duration)> = rows
        .iter()
        .filter_map(|r| match r.moment {
            Moment::Churn { at, .. } => Some((r, at)),
            Moment::Event(_) => None,
        })
        .collect();
    let (Some((first, t0)), Some((last, t1))) = (churn.first(), churn.last()) else {
        return;
    };
    let wall = (*t1 - *t0).as_secs_f64();
    for (i, name) in names.iter().enumerate() {
        if let (Some(a), Some(b)) = (first.nodes[i].cpu, last.nodes[i].cpu)
            && wall > 0.0
        {
            let pct = (b - a).as_secs_f64() / wall * 100.0;
            let waited = match (first.nodes[i].run_delay, last.nodes[i].run_delay) {
                (Some(a), Some(b)) => format!(
                    "; its threads waited for a CPU {:.0}% of the time (summed over threads)",
                    (b.saturating_sub(a)).as_secs_f64() / wall * 100.0
                ),
                _ => String::new(),
            };
            println!("  {name} CPU during churn: {pct:.0}% of one core{waited}");
        }
    }
}

fn yes(b: bool) -> &'static str {
    match b {
        true => "yes",
        false => "NO",
    }
}
