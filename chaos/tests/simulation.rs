//! The deterministic cluster simulation (see `chaos::sim`).
//!
//! - `every_seed_holds_the_invariants`: seeds `0..CALLGRID_SIM_SEEDS` (default 200); a failing
//!   seed prints `seed N failed: <invariant>: <detail>; replay: ...`. With
//!   `CALLGRID_SIM_SEED=N` it runs that one seed and prints its step trace.
//! - `a_seed_replays_exactly`: the same seed twice gives the same trace.
//! - `the_checks_catch_a_broken_failover`: with a deliberate bug in placement, some seed fails
//!   with a replayable message.

use chaos::sim::{run_seed, Faults, Mutation, Options, Report};

fn faults_from_env() -> Faults {
    match std::env::var("CALLGRID_SIM_FAULTS").as_deref() {
        Ok("crash") => Faults::CrashOnly,
        _ => Faults::All,
    }
}

fn mutation_from_env() -> Mutation {
    match std::env::var("CALLGRID_SIM_MUTATION").as_deref() {
        Ok("placement") => Mutation::PlacementIgnoresNodeDown,
        Ok("lease") => Mutation::IgnoreLease,
        _ => Mutation::None,
    }
}

fn summary(r: &Report) -> String {
    let s = &r.stats;
    format!(
        "seed {}: {} ms simulated, {} calls ({} answered, {} established, {} CDRs), {} crashes, {} restarts, {} partitions, {} slow links, {} takeovers, trace {} lines {:016x}",
        r.seed, s.sim_ms, s.calls, s.answered, s.established, s.cdrs, s.crashes, s.restarts, s.partitions, s.slow, s.takeovers, s.trace_lines, r.trace_hash
    )
}

// 200 seeds (`CALLGRID_SIM_SEEDS` to change), about 20 s. History: 135 of 200 failed when the
// mirror was first brought up to date with the node; the failures found real gaps, fixed in
// the node and mirrored here (see `chaos::sim`'s module docs and ARCHITECTURE.md "What the
// simulation taught"). `CALLGRID_SIM_KEEP_GOING=1` runs a seed past its first violation.
#[test]
fn every_seed_holds_the_invariants() {
    if let Ok(seed) = std::env::var("CALLGRID_SIM_SEED") {
        let seed: u64 = seed.parse().expect("CALLGRID_SIM_SEED is a number");
        let report = run_seed(
            seed,
            Options {
                verbose: true,
                mutation: mutation_from_env(),
                faults: faults_from_env(),
                keep_going: std::env::var("CALLGRID_SIM_KEEP_GOING").is_ok(),
            },
        );
        println!("{}", summary(&report));
        for v in &report.violations {
            println!("violation {}: {}", v.invariant, v.detail);
        }
        if let Some(line) = report.failure_line() {
            panic!("{line}");
        }
        return;
    }
    let seeds: u64 = std::env::var("CALLGRID_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let started = std::time::Instant::now();
    let mut failures = Vec::new();
    let mut totals = (0usize, 0usize, 0usize, 0usize);
    for seed in 0..seeds {
        let options = Options {
            faults: faults_from_env(),
            keep_going: std::env::var("CALLGRID_SIM_KEEP_GOING").is_ok(),
            ..Options::default()
        };
        let report = run_seed(seed, options);
        totals.0 += report.stats.calls;
        totals.1 += report.stats.established;
        totals.2 += report.stats.crashes;
        totals.3 += report.stats.takeovers;
        if let Some(line) = report.failure_line() {
            println!("{line}");
            failures.push(line);
        }
    }
    println!(
        "{seeds} seeds in {:.1} s: {} calls, {} established, {} crashes, {} takeovers; {} failed",
        started.elapsed().as_secs_f64(),
        totals.0,
        totals.1,
        totals.2,
        totals.3,
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_seed_replays_exactly() {
    let first = run_seed(11, Options::default());
    let second = run_seed(11, Options::default());
    assert_eq!(
        first.trace_hash,
        second.trace_hash,
        "{}\n{}",
        summary(&first),
        summary(&second)
    );
    assert_eq!(first.stats.trace_lines, second.stats.trace_lines);
    assert!(
        first.stats.calls > 0 && first.stats.trace_lines > 100,
        "{}",
        summary(&first)
    );
}

#[test]
fn the_checks_catch_a_broken_failover() {
    // A seed that passes with the real logic fails once placement ignores NodeDown (a dead
    // node's queues, agents and calls are never rebuilt elsewhere).
    let crash_only = Options {
        faults: Faults::CrashOnly,
        ..Options::default()
    };
    let broken = Options {
        mutation: Mutation::PlacementIgnoresNodeDown,
        ..crash_only
    };
    let caught = (0..100u64).find_map(|seed| {
        if !run_seed(seed, crash_only).violations.is_empty() {
            return None;
        }
        run_seed(seed, broken)
            .failure_line()
            .map(|line| (seed, line))
    });
    let (seed, line) = caught.expect("some seed that passes fails with the broken placement");
    println!("{line}");
    assert!(line.starts_with(&format!("seed {seed} failed: ")), "{line}");
    assert!(line.contains(&format!("replay: CALLGRID_SIM_MUTATION=placement CALLGRID_SIM_FAULTS=crash CALLGRID_SIM_SEED={seed} cargo test -p chaos --test simulation -- --nocapture")), "{line}");
    // And it replays exactly.
    let again = run_seed(seed, broken);
    assert_eq!(again.failure_line().as_deref(), Some(line.as_str()));
}
