use bench::cli::{Cli, Command};
use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(scenario) => bench::run::main(scenario),
        Command::Worker(share) => bench::worker::main(share),
        Command::Floor(args) => bench::floor::main(args),
    }
}
