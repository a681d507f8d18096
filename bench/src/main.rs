//! # bench
//!
//! NebengJek's benchmarks. Each suite measures our system and its baseline **in the
//! same run** (the machine is shared and noisy, so only same-run ratios mean much),
//! prints a table, and ends with one `ratio <name> <value>` line per comparison
//! (ours ÷ baseline, for throughput) for scripts to read.
//!
//! - `pipeline`: the ride lifecycle through our command pipeline versus stock cqrs-es +
//!   postgres-es, plus the raw PostgreSQL insert ceiling.
//! - `projections`: rebuild and `verify` over a million events against a raw COPY and a
//!   raw read of the same rows, and projection lag under the pipeline's load.
//! - `geo`: nearest-5 driver search (in-process grid vs Redis `GEOSEARCH`) and location
//!   ingest (batched consumer vs a Redis round trip per ping).

/// mimalloc: every tool here moves rows between threads (reader → checkers, tasks →
/// the store's batcher), where glibc malloc's arenas contend (ADR 0005).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod audit;
mod cqrs_baseline;
mod geo;
mod pipeline;
mod projections;
mod report;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "bench", about = "NebengJek benchmarks against same-run baselines")]
struct Cli {
    #[command(subcommand)]
    suite: Suite,
}

#[derive(Debug, Subcommand)]
enum Suite {
    /// Command pipeline vs cqrs-es + postgres-es, and the raw INSERT ceiling.
    Pipeline {
        /// Bound the run to about two minutes.
        #[arg(long)]
        quick: bool,
        /// Concurrent tasks to measure at.
        #[arg(long, value_delimiter = ',', default_values_t = [1usize, 32, 128])]
        tasks: Vec<usize>,
        /// Measure only our pipeline (for profiling); prints no ratios.
        #[arg(long)]
        ours_only: bool,
        /// PostgreSQL server (the bench creates and drops its own databases there).
        #[arg(
            long,
            env = "DATABASE_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/nebengjek"
        )]
        database_url: String,
    },
    /// Rebuild and verify vs raw COPY and raw read; projection lag under load.
    Projections {
        /// Bound the run to about two minutes.
        #[arg(long)]
        quick: bool,
        /// Events in the store (at least a million for the headline numbers).
        #[arg(long, default_value_t = 1_000_000)]
        events: i64,
        /// PostgreSQL server (the bench creates and drops its own databases there).
        #[arg(
            long,
            env = "DATABASE_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/nebengjek"
        )]
        database_url: String,
    },
    /// The audit log: tree maintenance per event, the tree for N events built from
    /// scratch, inclusion and consistency proof latency.
    Audit {
        /// Fewer proof samples.
        #[arg(long)]
        quick: bool,
        /// Events in the log.
        #[arg(long, default_value_t = 1_000_000)]
        events: i64,
        /// PostgreSQL server (the bench creates and drops its own database there).
        #[arg(
            long,
            env = "DATABASE_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/nebengjek"
        )]
        database_url: String,
    },
    /// Nearest-5 search and location ingest vs plain Redis GEO commands.
    Geo {
        /// Bound the run to about two minutes.
        #[arg(long)]
        quick: bool,
        /// PostgreSQL server (the bench creates and drops its own database there).
        #[arg(
            long,
            env = "DATABASE_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/nebengjek"
        )]
        database_url: String,
        /// Redis.
        #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
        redis_url: String,
        /// NATS.
        #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
        nats_url: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.suite {
        Suite::Pipeline {
            quick,
            tasks,
            ours_only,
            database_url,
        } => pipeline::run(&database_url, quick, &tasks, ours_only).await,
        Suite::Projections {
            quick,
            events,
            database_url,
        } => projections::run(&database_url, quick, events).await,
        Suite::Audit {
            quick,
            events,
            database_url,
        } => audit::run(&database_url, quick, events).await,
        Suite::Geo {
            quick,
            database_url,
            redis_url,
            nats_url,
        } => {
            let targets = geo::Targets {
                database_url,
                redis_url,
                nats_url,
            };
            geo::run(&targets, quick).await
        }
    }
}
