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
