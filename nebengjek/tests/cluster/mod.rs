//! A cluster of real processes per test: its own `nats-server` (JetStream, store in a
//! temporary directory, the shipped `deploy/nats/nats-server.conf`: users and subject
//! permissions, the nodes connecting as the service user) and `redis-server` on free
//! ports, its own PostgreSQL database
//! on the shared server, and any number of `nebengjek serve` children on free HTTP
//! ports, each of which can be SIGKILLed and restarted.
//!
//! Everything is torn down on drop, a panicking test included: children are killed
//! and reaped, the database is dropped, the temporary directory removed. A missing
//! `nats-server` or `redis-server` skips the test on a developer's machine and fails
//! it under `CI=true`. Children's logs are kept in the temporary directory and the
//! tail of each is printed when a test fails (they are the first thing to read);
//! `NEBENGJEK_KEEP_FAILED=1` also keeps a failed test's database and processes' logs.
#![allow(dead_code)]

pub mod checks;
pub mod client;
#[path = "../../../api/tests/schema_check/mod.rs"]
pub mod schema_check;

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::PgPool;

/// How long a service or node may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The NATS users of `deploy/nats/nats-server.conf` and the passwords the test gives
/// them: the service's own, and a client that may only send commands.
pub const NATS_SERVICE: (&str, &str) = ("nebengjek", "test-service-password");
/// See [`NATS_SERVICE`].
pub const NATS_CLIENT: (&str, &str) = ("client", "test-client-password");

/// The shipped NATS server configuration.
pub fn nats_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats/nats-server.conf")
}

/// A connection to the cluster's NATS as `user`, with the inbox the configuration
/// gives that user (`_NEBENGJEK_INBOX` for the service). Server errors (permission
/// violations) go to the returned channel.
pub async fn nats_as(
    url: &str,
    (user, password): (&str, &str),
) -> (async_nats::Client, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut options = async_nats::ConnectOptions::new()
        .user_and_password(user.into(), password.into())
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(event.to_string());
            }
        });
    if user == NATS_SERVICE.0 {
        options = options.custom_inbox_prefix(nebengjek::startup::SERVICE_INBOX_PREFIX);
    }
    let client = options
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("NATS at {url} as {user}: {e}"));
    (client, rx)
}

/// The shared PostgreSQL server (`DATABASE_URL`'s server; the database is ours).
fn admin_url() -> String {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/nebengjek".into());
    match url.rfind('/') {
        Some(i) if url[..i].contains("://") && url[..i].len() > "postgres://".len() => {
            format!("{}/postgres", &url[..i])
        }
        _ => url,
    }
}

/// A binary on `PATH` or in the usual system directories.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/bin", "/usr/bin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Both service binaries, or `None` (the test should return) outside CI. Under
/// `CI=true` a missing one fails the test.
pub fn service_binaries() -> Option<(PathBuf, PathBuf)> {
    match (find_binary("nats-server"), find_binary("redis-server")) {
        (Some(nats), Some(redis)) => Some((nats, redis)),
        (nats, redis) => {
            let missing: Vec<&str> = [("nats-server", nats.is_none()), ("redis-server", redis.is_none())]
                .into_iter()
                .filter_map(|(n, m)| m.then_some(n))
                .collect();
            let message = format!(
                "{} not found on PATH or in /usr/sbin, /usr/local/bin, /usr/bin: \
                 install them (scripts/services.sh does) to run the process tests",
                missing.join(" and ")
            );
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("{message} (CI=true: these tests must run)");
            }
            eprintln!("skipping: {message}");
            None
        }
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Polls `ready` until it holds or `timeout` passes.
pub fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process that is killed and reaped when dropped.
#[derive(Debug)]
struct Proc {
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn spawn(mut command: Command, log: PathBuf) -> Proc {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        command
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        Proc {
            child: Some(child),
            log,
        }
    }

    /// SIGKILL (std's `kill` on Unix) and reap.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    fn tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn tcp_greets(port: u16, prefix: &[u8]) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = vec![0u8; prefix.len()];
    s.read_exact(&mut buf).is_ok() && buf == prefix
}

fn redis_pong(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// A blocking HTTP/1.1 GET; the status code.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// A `nebengjek serve` child.
#[derive(Debug)]
pub struct Node {
    /// Its HTTP port (kept across restarts).
    pub port: u16,
    /// `--role`.
    pub role: &'static str,
    proc: Option<Proc>,
    starts: usize,
}

impl Node {
    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Whether it runs (it has not been killed, nor died).
    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.exited().is_none())
    }
}

/// The services and nodes of one test.
#[derive(Debug)]
pub struct Cluster {
    /// Temporary directory: JetStream store, logs.
    pub dir: PathBuf,
    nats_bin: PathBuf,
    /// NATS client port.
    pub nats_port: u16,
    nats: Option<Proc>,
    nats_starts: usize,
    /// Redis port.
    pub redis_port: u16,
    redis: Option<Proc>,
    /// The database's name on the shared server.
    pub database: String,
    /// The nodes, in the order they were added.
    pub nodes: Vec<Node>,
    /// Extra environment for every node (`MATCHING_RESPONSE_TIMEOUT_SEC`, ...).
    pub env: Vec<(String, String)>,
    pool: Option<PgPool>,
}

impl Cluster {
    /// Starts NATS and Redis and creates the database; `None` when the service
    /// binaries are missing outside CI.
    pub async fn start(name: &str) -> Option<Cluster> {
        let (nats_bin, redis_bin) = service_binaries()?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = std::env::temp_dir().join(format!("nebengjek-{name}-{}", &id[..12]));
        std::fs::create_dir_all(dir.join("jetstream")).expect("temp dir");
        let database = format!("nj_{name}_{}", &id[..12]);
        let admin = PgPool::connect(&admin_url())
            .await
            .expect("the shared PostgreSQL (DATABASE_URL)");
        sqlx::query(&format!("CREATE DATABASE {database}"))
            .execute(&admin)
            .await
            .expect("create the test database");
        admin.close().await;

        let redis_port = free_port();
        let mut redis = Command::new(&redis_bin);
        redis
            .args(["--bind", "127.0.0.1", "--port", &redis_port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&dir);
        let mut cluster = Cluster {
            nats_bin,
            nats_port: free_port(),
            nats: None,
            nats_starts: 0,
            redis_port,
            redis: Some(Proc::spawn(redis, dir.join("redis.log"))),
            database,
            nodes: Vec::new(),
            env: vec![
                ("MATCHING_RESPONSE_TIMEOUT_SEC".into(), "4".into()),
                ("DATABASE_MAX_CONNECTIONS".into(), "6".into()),
            ],
            pool: None,
            dir,
        };
        cluster.start_nats();
        let port = cluster.redis_port;
        wait_until("redis-server answers PING", START_TIMEOUT, || redis_pong(port));
        cluster.pool = Some(
            PgPool::connect(&cluster.database_url())
                .await
                .expect("connect to the test database"),
        );
        Some(cluster)
    }

    /// The test database's URL.
    pub fn database_url(&self) -> String {
        format!("{}/{}", admin_url().trim_end_matches("/postgres"), self.database)
    }

    /// A pool on the test database.
    pub fn pool(&self) -> &PgPool {
        self.pool.as_ref().expect("pool")
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn nats_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.nats_port)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.redis_port)
    }

    /// Starts (or restarts) NATS with JetStream on its port and store directory.
    pub fn start_nats(&mut self) {
        self.nats_starts += 1;
        let mut nats = Command::new(&self.nats_bin);
        nats.arg("-c")
            .arg(nats_config())
            .args(["-a", "127.0.0.1", "-p", &self.nats_port.to_string()])
            .env("NATS_STORE_DIR", self.dir.join("jetstream"))
            .env("NATS_SERVICE_PASSWORD", NATS_SERVICE.1)
            .env("NATS_CLIENT_PASSWORD", NATS_CLIENT.1);
        self.nats = Some(Proc::spawn(nats, self.dir.join("nats.log")));
        let port = self.nats_port;
        wait_until("nats-server greets with INFO", START_TIMEOUT, || {
            tcp_greets(port, b"INFO")
        });
    }

    /// SIGKILLs NATS (its store directory stays).
    pub fn kill_nats(&mut self) {
        if let Some(mut p) = self.nats.take() {
            p.kill();
        }
    }

    /// `FLUSHALL` on Redis.
    pub async fn flush_redis(&self) {
        let client = redis::Client::open(self.redis_url()).expect("redis url");
        let mut conn = client.get_multiplexed_async_connection().await.expect("redis");
        let () = redis::cmd("FLUSHALL")
            .query_async(&mut conn)
            .await
            .expect("FLUSHALL");
    }

    /// Adds a node (not started yet) with `role`; returns its index.
    pub fn add_node(&mut self, role: &'static str) -> usize {
        self.nodes.push(Node {
            port: free_port(),
            role,
            proc: None,
            starts: 0,
        });
        self.nodes.len() - 1
    }

    /// Spawns node `i` (it must not be running).
    pub fn spawn_node(&mut self, i: usize) {
        let env = [
            ("DATABASE_URL".to_owned(), self.database_url()),
            ("NATS_URL".to_owned(), self.nats_url()),
            ("NATS_USER".to_owned(), NATS_SERVICE.0.to_owned()),
            ("NATS_PASSWORD".to_owned(), NATS_SERVICE.1.to_owned()),
            ("REDIS_URL".to_owned(), self.redis_url()),
            ("AUTH_DEV_ECHO_OTP".to_owned(), "true".to_owned()),
            ("APP_ENV".to_owned(), "development".to_owned()),
            ("RUST_LOG".to_owned(), "info,sqlx=warn".to_owned()),
        ];
        let node = &mut self.nodes[i];
        assert!(node.proc.is_none(), "node {i} is already running");
        node.starts += 1;
        let mut command = Command::new(env!("CARGO_BIN_EXE_nebengjek"));
        command
            .args(["serve", "--role", node.role])
            // No `.env` from the developer's checkout.
            .current_dir(&self.dir)
            .env("HTTP_ADDR", format!("127.0.0.1:{}", node.port));
        for (k, v) in env.iter().chain(&self.env) {
            command.env(k, v);
        }
        let log = self.dir.join(format!("node{i}.log"));
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| writeln!(f, "===== start {} =====", node.starts));
        node.proc = Some(Proc::spawn(command, log));
    }

    /// Waits until node `i` answers `/readyz` with 200.
    pub fn wait_ready(&mut self, i: usize) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if http_status(self.nodes[i].port, "/readyz") == Some(200) {
                return;
            }
            if let Some(status) = self.nodes[i].proc.as_mut().and_then(Proc::exited) {
                panic!("node {i} exited with {status}:\n{}", self.node_log(i, 40));
            }
            assert!(
                Instant::now() < deadline,
                "node {i} not ready within {START_TIMEOUT:?}:\n{}",
                self.node_log(i, 40)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Spawns node `i` and waits until it is ready.
    pub fn start_node(&mut self, i: usize) {
        self.spawn_node(i);
        self.wait_ready(i);
    }

    /// Spawns every node, then waits for all of them.
    pub fn start_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.spawn_node(i);
        }
        for i in 0..self.nodes.len() {
            self.wait_ready(i);
        }
    }

    /// SIGKILLs node `i`.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].proc.take() {
            p.kill();
        }
    }

    /// SIGKILLs every node.
    pub fn kill_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
    }

    /// Every node's base URL.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.role == "all" || n.role == "api")
            .map(Node::url)
            .collect()
    }

    /// The last `lines` of node `i`'s log.
    pub fn node_log(&self, i: usize, lines: usize) -> String {
        let log = self.dir.join(format!("node{i}.log"));
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn print_logs(&self) {
        for i in 0..self.nodes.len() {
            eprintln!(
                "----- node {i} ({}) -----\n{}",
                self.nodes[i].role,
                self.node_log(i, 30)
            );
        }
        for (name, p) in [("nats", &self.nats), ("redis", &self.redis)] {
            if let Some(p) = p {
                eprintln!("----- {name} -----\n{}", p.tail(10));
            }
        }
    }

    /// Where the children's logs are.
    pub fn log_dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let keep = std::thread::panicking() && std::env::var_os("NEBENGJEK_KEEP_FAILED").is_some();
        if std::thread::panicking() {
            self.print_logs();
            eprintln!("logs in {}", self.dir.display());
            if keep {
                eprintln!("database {} kept (NEBENGJEK_KEEP_FAILED)", self.database);
            }
        }
        self.kill_all();
        self.kill_nats();
        if let Some(mut r) = self.redis.take() {
            r.kill();
        }
        if keep {
            return;
        }
        let database = self.database.clone();
        // Closed connections or not, `WITH (FORCE)` ends them.
        drop(self.pool.take());
        // Drop runs outside any runtime we could block on: a thread with its own.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            runtime.block_on(async {
                if let Ok(admin) = PgPool::connect(&admin_url()).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
                        .execute(&admin)
                        .await;
                }
            });
        })
        .join();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
