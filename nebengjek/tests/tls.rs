//! TLS to the services when the URL asks for it: the crates' TLS features are built in
//! (sqlx with rustls, redis with rustls for `rediss://`, async-nats's rustls for
//! `tls://`). PostgreSQL is checked for real: `sslmode=require` connects through
//! `startup::connect`, and the server says the session is encrypted. The shared
//! server must have `ssl = on` (Debian's and Ubuntu's PostgreSQL packages do, with
//! their self-signed "snakeoil" certificate); the test fails, never skips, when not.

use nebengjek::config::Config;

#[tokio::test]
async fn database_url_with_sslmode_require_connects_over_tls() {
    let mut config = Config::from_env().expect("config");
    // The server's `postgres` database: it always exists.
    let url = config.database_url.split('?').next().unwrap_or_default();
    let server = url.rsplit_once('/').map_or(url, |(server, _)| server);
    config.database_url = format!("{server}/postgres?sslmode=require");
    let pool = nebengjek::startup::connect(&config)
        .await
        .unwrap_or_else(|e| panic!("sslmode=require connects (is ssl = on in postgresql.conf?): {e:#}"));
    let (ssl, version): (bool, Option<String>) =
        sqlx::query_as("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .expect("pg_stat_ssl");
    assert!(ssl, "the session is encrypted");
    assert!(version.is_some_and(|v| v.starts_with("TLS")), "a TLS version");
    pool.close().await;
}

#[test]
fn redis_and_nats_accept_tls_urls() {
    // A `rediss://` URL is refused by a build without TLS ("can't connect with TLS, the
    // feature is not enabled"); with it, the client is made (connecting is lazy).
    redis::Client::open("rediss://127.0.0.1:6380/").expect("rediss:// is supported");
    // async-nats always has rustls: `tls://` parses into a server address that asks
    // for TLS.
    let addr: async_nats::ServerAddr = "tls://127.0.0.1:4443".parse().expect("tls://");
    assert!(addr.tls_required());
}
