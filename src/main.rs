//! CLI entry: parse arguments, set up logging, run the command, turn errors into one line.

use clap::Parser;

fn main() -> std::process::ExitCode {
    smtp_relay::memory_budget::release_large_blocks();
    smtp_relay::inbound::tls::install_process_default();
    let cli = smtp_relay::cli::Cli::parse();
    let default_level = match cli.command {
        smtp_relay::cli::Command::Serve => "info",
        _ => "warn",
    };
    smtp_relay::logging::init(cli.log_format, default_level);
    match smtp_relay::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smtp-relay: error: {}", smtp_relay::cli::error_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
