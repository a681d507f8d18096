//! `replay-tools`: the auditors' and operators' command line. Run with `--help`.

use clap::{Parser, Subcommand};
use sqlx::PgPool;
use uuid::Uuid;

/// Audit NebengJek's event store.
#[derive(Debug, Parser)]
#[command(name = "replay-tools", version, about, long_about = None)]
struct Cli {
    /// The event store (PostgreSQL).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/nebengjek"
    )]
    database_url: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print an aggregate's raw event stream, one JSON object a line.
    Events {
        /// `ride` or `match`.
        aggregate_type: String,
        /// The aggregate's id.
        id: Uuid,
    },
    /// Check every aggregate's hash chain against the recorded chain heads; exits 1
    /// and lists what is broken if anything was edited or deleted.
    Verify,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let pool = PgPool::connect(&cli.database_url).await?;
    match cli.command {
        Command::Events { aggregate_type, id } => {
            for event in migrations::read_stream(&pool, &aggregate_type, id, 0).await? {
                println!("{}", serde_json::to_string(&event)?);
            }
        }
        Command::Verify => {
            let (breaks, checked) = replay_tools::verify_chains(&pool).await?;
            if breaks.is_empty() {
                println!("verify: {checked} events, every hash chain intact");
            } else {
                for b in &breaks {
                    println!("BROKEN {b}");
                }
                println!("verify: {checked} events, {} problems", breaks.len());
                std::process::exit(1);
            }
        }
    }
    Ok(())
}
