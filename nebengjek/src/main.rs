//! # nebengjek
//!
//! The one binary. `nebengjek migrate` applies the schema; `nebengjek serve` runs the
//! system: the command pipeline with its NATS ingress, the process manager, the
//! deadline scheduler, the edge (HTTP and WebSocket, `api`) and the operator endpoints
//! (`/healthz`, `/readyz`, `/metrics`). `nebengjek user create-analyst` is the operator's
//! way to make an analyst account.
//! `--role` runs one part alone so that several processes can share one PostgreSQL,
//! NATS and Redis.

/// mimalloc: every tool here moves rows between threads (reader → checkers, tasks →
/// the store's batcher), where glibc malloc's arenas contend (ADR 0005).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use nebengjek::{config, demo, load, startup, Role};

/// NebengJek ride-hailing backend.
#[derive(Debug, Parser)]
#[command(name = "nebengjek", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply pending database migrations and exit.
    Migrate,
    /// Print the AsyncAPI 3 document of the WebSocket and NATS interfaces (what
    /// `docs/asyncapi.json` holds), generated from `api::protocol`.
    Asyncapi,
    /// Start the system in this process, simulate a city over WebSocket, verify.
    Demo {
        /// Simulated drivers.
        #[arg(long, default_value_t = demo::DemoOptions::default().drivers)]
        drivers: usize,
        /// Simulated passengers.
        #[arg(long, default_value_t = demo::DemoOptions::default().passengers)]
        passengers: usize,
        /// Seconds during which new rides start (in-flight rides then finish).
        #[arg(long, default_value_t = demo::DemoOptions::default().duration_s)]
        duration: u64,
    },
    /// Run the city simulator against a running deployment and write a report.
    Load {
        /// An edge's HTTP base (repeat for several); users spread round-robin.
        #[arg(long = "url", required = true)]
        urls: Vec<String>,
        /// All clients, active and idle.
        #[arg(long, default_value_t = 100)]
        clients: usize,
        /// Active drivers (default 6% of clients).
        #[arg(long)]
        drivers: Option<usize>,
        /// Active passengers (default 4% of clients).
        #[arg(long)]
        passengers: Option<usize>,
        /// Seconds measured once every client has logged in and connected (new rides
        /// start until then; rides in flight then finish).
        #[arg(long, default_value_t = 60)]
        duration: u64,
        /// Logins in flight at once while the clients connect.
        #[arg(long, default_value_t = 64)]
        login_concurrency: usize,
        /// The JSON report; the Markdown one goes beside it with `.md`, a chart of
        /// commands/s and ack p50/p99 over time with `.svg`.
        #[arg(long, default_value = "load-report.json")]
        report: std::path::PathBuf,
    },
    /// Run the system (migrates first).
    Serve {
        /// Which part to run; `all` runs everything in one process.
        #[arg(long, value_enum, default_value_t = Role::All)]
        role: Role,
    },
    /// Manage user accounts.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create an analyst account (or make an existing passenger one) and print it.
    CreateAnalyst {
        /// The analyst's Telkomsel number.
        #[arg(long)]
        msisdn: String,
        /// Their name.
        #[arg(long)]
        fullname: Option<String>,
    },
}

fn init_tracing(default: &str) {
    use tracing_subscriber::{fmt, EnvFilter};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    if std::env::var("LOG_FORMAT").as_deref() == Ok("json") {
        fmt().with_env_filter(filter).json().init();
    } else {
        fmt().with_env_filter(filter).init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Asyncapi) {
        println!("{}", serde_json::to_string_pretty(&api::protocol::asyncapi())?);
        return Ok(());
    }
    // The demo prints its own story; only warnings from the system interrupt it.
    init_tracing(if matches!(cli.command, Command::Demo { .. }) {
        "warn"
    } else {
        "info,sqlx=warn"
    });
    if let Command::Load {
        urls,
        clients,
        drivers,
        passengers,
        duration,
        login_concurrency,
        report,
    } = cli.command
    {
        return load::run(load::LoadOptions {
            urls,
            clients,
            drivers,
            passengers,
            duration_s: duration,
            login_concurrency,
            report,
        })
        .await;
    }
    let config = config::Config::from_env()?;
    match cli.command {
        Command::Load { .. } | Command::Asyncapi => Ok(()),
        Command::Migrate => {
            let pool = startup::connect(&config).await?;
            migrations::run(&pool).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Serve { role } => startup::serve(config, role).await,
        Command::Demo {
            drivers,
            passengers,
            duration,
        } => {
            demo::run(
                config,
                demo::DemoOptions {
                    drivers,
                    passengers,
                    duration_s: duration,
                },
            )
            .await
        }
        Command::User {
            command: UserCommand::CreateAnalyst { msisdn, fullname },
        } => {
            let msisdn = domain::msisdn::Msisdn::parse(&msisdn)
                .map_err(|e| anyhow::anyhow!("--msisdn: {}", e.message))?;
            let pool = startup::connect(&config).await?;
            migrations::run(&pool).await?;
            let now = commands::clock::Clock::now(&commands::clock::SystemClock);
            let user = api::users::create_analyst(&pool, &msisdn, fullname.as_deref(), now).await?;
            println!("{}", serde_json::to_string_pretty(&user)?);
            Ok(())
        }
    }
}
