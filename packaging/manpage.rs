//! Writes freshet's man pages from its clap definitions (clap_mangen), so they cannot drift
//! from `--help`: `freshet.1` and one page per command (`freshet-serve.1`, ...), into the
//! folder named on the command line. `packaging/deb` runs it and gzips the pages.

use std::path::PathBuf;

use clap::CommandFactory;

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(std::env::args_os().nth(1).expect("usage: manpage OUT_DIR"));
    std::fs::create_dir_all(&dir)?;
    let command = freshet::cli::Cli::command();
    clap_mangen::generate_to(command, &dir)?;
    Ok(())
}
