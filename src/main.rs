//! The `freshet` binary: parse the command line, set up logging, run the command, and turn
//! the result into an exit code in one place (0 ok, 1 failure, 2 usage via clap).

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    freshet::rules::memory::tune_allocator();
    let cli = freshet::cli::Cli::parse();
    if cli.command.prints_to_a_pipe() {
        // `freshet events | head` ends the reader first: end quietly, as Unix tools do,
        // instead of panicking on the broken pipe. The daemon and `send` keep Rust's
        // default (ignored), since their sockets must report EPIPE as an error.
        // SAFETY: signal() with SIG_DFL installs no handler code.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
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
