//! The `freshet` binary: parse the command line, set up logging, run the command, and turn
//! the result into an exit code in one place (0 ok, 1 failure, 2 usage via clap).

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = freshet::cli::Cli::parse();
    freshet::telemetry::init(cli.log_format);
    match freshet::cli::run(cli).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("freshet: {error:#}");
            ExitCode::from(1)
        }
    }
}
