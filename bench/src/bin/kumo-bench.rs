//! `kumo-bench`: a memtier-like memcached load generator (text and binary protocols, pipelining,
//! set:get mix, latency percentiles). See `kumo-bench --help`; the last line it prints is
//! `RESULT key=value ...` for scripts.

use kumofs_bench::loadgen_opts::{Options, OptionsError};
use kumofs_bench::loadgen_run::run;
use std::process::ExitCode;

fn main() -> ExitCode {
    let opts = match Options::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(OptionsError::Help) => {
            println!("{}", OptionsError::Help);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("kumo-bench: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&opts) {
        Ok(totals) => {
            println!("{}", totals.report(&opts));
            if totals.failures.is_empty() && totals.verify_failures == 0 && totals.ops() > 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("kumo-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
