//! # callgrid: the operator's binary
//!
//! `callgrid node --config FILE` runs one node: the Raft group member (`cluster`), the
//! call-control runtime (`actors::node`) and the REST/WebSocket API (`api`). Every other verb
//! is a client: `cluster up|down|status` manages a local multi-process cluster, and the admin
//! verbs (`tenant`, `queue`, `agent`, ...) talk to any node's API.
//!
//! Errors reach the operator as `error E-CODE: what; fix: hint` on stderr with a non-zero exit
//! status (2 for bad input); nothing the operator types can panic the binary.

mod api;
mod bench;
mod cli;
mod config;
mod demo;
mod dr;
mod drill;
mod error;
mod metrics_catalog;
mod node;
mod traffic;

use clap::Parser;

fn main() {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => exit_on_clap_error(e),
    };
    if matches!(cli.command, cli::Command::Node { .. }) {
        limit_malloc_arenas();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error E-RUNTIME: cannot start the async runtime: {e}; fix: check thread and memory limits");
            std::process::exit(error::EXIT_FAILURE);
        }
    };
    let result = runtime.block_on(cli::run(cli));
    // Background tasks (HTTP pools) must not keep a finished command alive.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    if let Err(e) = result {
        let (line, code) = error::render(&e);
        eprintln!("{line}");
        std::process::exit(code);
    }
}

/// The environment variable glibc's malloc reads its arena limit from, at start-up.
const MALLOC_ARENA_MAX: &str = "MALLOC_ARENA_MAX";
/// Set with it on the one re-execution, so there is never a second: glibc drops `MALLOC_*`
/// variables from the environment of a program run in secure mode (file capabilities, such
/// as `cap_net_bind_service` to bind port 5060), and the node must not loop on exec then.
const ARENAS_SET: &str = "CALLGRID_MALLOC_ARENAS_SET";

/// Runs the node with glibc's malloc limited to one arena per core (at least two), unless
/// the operator set `MALLOC_ARENA_MAX`: the process executes itself again, once, with it
/// set (same pid), before any thread starts.
///
/// Why: glibc gives a thread that finds the arenas busy a new one, up to eight per core, and
/// each arena keeps what was freed into it. A node's threads (tokio's workers, the blocking
/// pool that encodes snapshots, RocksDB's) spread its heap over many arenas. Holding 20,000
/// signalling-only calls on 2 cores, the nodes grew 89-100 KiB of RSS per call with glibc's
/// default and 73-78 KiB with two arenas (docs/PERFORMANCE.md, "Memory per call"). Setting
/// it needs `mallopt`, which is unsafe code, which the workspace forbids; the variable is
/// read by glibc itself. Other C libraries ignore it. An operator's own setting wins, as
/// `MALLOC_ARENA_MAX` or as `glibc.malloc.arena_max` in `GLIBC_TUNABLES`.
fn limit_malloc_arenas() {
    use std::os::unix::process::CommandExt;
    let tuned = std::env::var_os("GLIBC_TUNABLES")
        .is_some_and(|t| t.to_string_lossy().contains("glibc.malloc.arena_max"));
    if !cfg!(target_env = "gnu")
        || tuned
        || std::env::var_os(MALLOC_ARENA_MAX).is_some()
        || std::env::var_os(ARENAS_SET).is_some()
    {
        return;
    }
    let arenas = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    let mut args = std::env::args_os();
    // `/proc/self/exe` is this very binary even if its file was replaced since it started.
    let mut command = std::process::Command::new("/proc/self/exe");
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    let e = command
        .args(args)
        .env(MALLOC_ARENA_MAX, arenas.to_string())
        .env(ARENAS_SET, "1")
        .exec();
    // Only reached if exec failed: run as we are, with glibc's default.
    eprintln!("warning: cannot restart with {MALLOC_ARENA_MAX}={arenas} ({e}); running with glibc's default arenas");
}

/// Help and version go to stdout with status 0; usage errors become `error E-USAGE: ...`.
fn exit_on_clap_error(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
        _ => {
            let rendered = e.render().to_string();
            let mut lines = rendered.lines();
            let first = lines
                .next()
                .unwrap_or("bad command line")
                .trim_start_matches("error: ");
            eprintln!("error E-USAGE: {first}; fix: see `callgrid --help` or the command's --help");
            for line in lines.filter(|l| !l.trim().is_empty()) {
                eprintln!("  {}", line.trim_end());
            }
            std::process::exit(error::EXIT_USAGE);
        }
    }
}
