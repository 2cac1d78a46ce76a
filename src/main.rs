use clap::Parser;
use std::process::ExitCode;

use pma2docker::cli::{self, Cli};

#[tokio::main]
async fn main() -> ExitCode {
    let parsed = Cli::parse();
    match cli::run(parsed).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line: the error and its causes.
            let causes: Vec<String> = error.chain().map(ToString::to_string).collect();
            eprintln!("error: {}", causes.join(": "));
            ExitCode::FAILURE
        }
    }
}
