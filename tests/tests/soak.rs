//! The soak (issue #10, point 7; slow tier): the quickstart topology (coordinator, tool-server,
//! learner, two actors) trains for `SOAK_MINUTES` (default 30) while the resident memory of
//! every process is sampled once a minute. Passes when no process grows by 10% or more after
//! the first five minutes, and the run is still training at the end. Prints the series (MB per
//! process per minute).
//!
//! "Grows" compares peaks, not single samples: the learner's resident memory swings by a
//! quarter or more from one minute to the next as the allocator takes and returns tensor
//! buffers (578 to 1,218 MB over two runs), so one sample against another measures the swing. The peak of the last five samples must stay below 1.1 x the peak of minutes 5 to 9.

use std::time::{Duration, Instant};

use paretopo_tests::Server;
use paretopo_tests::run::{TestRun, learner_status, start_run, wait_until};

/// Resident memory of `server`'s process, in MB.
fn rss_mb(server: &Server) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id()))
        .expect("the process is alive");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .expect("VmRSS")
        / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow tier: 30 minutes"]
async fn thirty_minutes_of_training_grow_no_process_by_ten_percent_after_minute_five() {
    let minutes: usize =
        std::env::var("SOAK_MINUTES").ok().and_then(|m| m.parse().ok()).unwrap_or(30);
    assert!(minutes >= 14, "SOAK_MINUTES must leave two five-minute windows after minute 5");
    // The quickstart's training settings (groups of 8, 8 groups a step, the default prompt
    // batch, budget and checkpoint interval), a short warm start, and steps enough never to
    // finish.
    let run = TestRun::new(
        4,
        1_000_000,
        &[
            "algorithm.groups_per_step=8",
            "algorithm.group_size=8",
            "algorithm.actor_batch_prompts=4",
            "algorithm.token_budget=96",
            "algorithm.checkpoint_every=50",
        ],
    );
    let (coordinator, tool_server, learner, actors) = start_run(&run, 2).await;
    wait_until(&run, "training", Duration::from_secs(300), || async {
        learner_status(&learner).await.step >= 1
    })
    .await;
    let names = ["coordinator", "tool-server", "learner", "actor-0", "actor-1"];
    let processes: Vec<&Server> =
        [&coordinator, &tool_server, &learner].into_iter().chain(actors.iter()).collect();
    let mut series: Vec<Vec<f64>> = vec![Vec::new(); processes.len()];
    let started = Instant::now();
    for minute in 0..=minutes {
        let due = started + Duration::from_secs(60 * minute as u64);
        tokio::time::sleep(due.saturating_duration_since(Instant::now())).await;
        for (samples, process) in series.iter_mut().zip(&processes) {
            samples.push(rss_mb(process));
        }
        let step = learner_status(&learner).await.step;
        eprintln!(
            "soak minute {minute}: step {step}; MB {}",
            names
                .iter()
                .zip(&series)
                .map(|(n, s)| format!("{n} {:.1}", s[minute]))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let step = learner_status(&learner).await.step;
    let peak = |s: &[f64]| s.iter().copied().fold(0.0, f64::max);
    // Print every series first, so that a failure shows them all.
    for (name, samples) in names.iter().zip(&series) {
        eprintln!(
            "soak {name}: {}",
            samples.iter().map(|v| format!("{v:.1}")).collect::<Vec<_>>().join(" ")
        );
    }
    for (name, samples) in names.iter().zip(&series) {
        let early = peak(&samples[5..10]);
        let late = peak(&samples[samples.len() - 5..]);
        assert!(
            late < early * 1.10,
            "{name}: the peak of the last five minutes, {late:.1} MB, is 10% or more above \
             the peak of minutes 5 to 9, {early:.1} MB"
        );
    }
    assert!(step > 1, "the run kept training: step {step}");
}
