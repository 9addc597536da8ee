//! The `haven` command.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "haven", version, about = "Haven: VM backup and disaster recovery")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an S3-compatible storage node.
    StorageNode(haven_storage_node::StorageNodeArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::StorageNode(args) => haven_storage_node::run(args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
