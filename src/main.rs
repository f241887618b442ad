//! The `samp` binary: parse the command line, set up logging and threads, run the command.

use clap::Parser;
use samp::cli::{self, Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    match samp::kernels::isa::max_isa() {
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
        Ok(cap) if cap != samp::kernels::isa::IsaCap::Native => {
            tracing::info!("SAMP_MAX_ISA={}: kernels capped", cap.name());
        }
        Ok(_) => {}
    }
    if let Some(n) = cli.threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
        {
            eprintln!("error: cannot start {n} compute threads: {e}");
            return std::process::ExitCode::FAILURE;
        }
    }
    let result = match &cli.command {
        Command::Embed(a) => cli::run_embed(a),
        Command::Classify(a) => cli::run_classify(a),
        Command::Tag(a) => cli::run_tag(a),
        Command::Bench(a) => cli::run_bench(a),
        Command::Kernels(a) => cli::run_kernels(a),
        Command::Serve(a) => cli::run_serve(a),
        Command::Client(a) => cli::run_client(a),
        Command::Quantize(a) => cli::run_quantize(a),
        Command::Eval(a) => cli::run_eval(a),
        Command::Loadgen(a) => cli::run_loadgen(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SAMP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
