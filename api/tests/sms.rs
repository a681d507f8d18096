//! The SMS webhook adapter against a real local HTTP server (axum on port 0): the body
//! it posts, retries with backoff on 5xx and timeouts, no retry on a 4xx refusal, and
//! logs with neither the code nor the whole number.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::sms::{SmsSender, WebhookPolicy, WebhookSms};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use domain::msisdn::Msisdn;
use serde_json::Value;

/// What the fake gateway answers, attempt by attempt (the last one repeats), and what
/// it received.
#[derive(Clone, Default)]
struct Gateway {
    script: Arc<Vec<(u16, Duration)>>,
    received: Arc<Mutex<Vec<(Instant, Value)>>>,
}

async fn receive(State(g): State<Gateway>, Json(body): Json<Value>) -> StatusCode {
    let n = {
        let mut received = g.received.lock().unwrap();
        received.push((Instant::now(), body));
        received.len()
    };
    let (status, delay) = g.script[(n - 1).min(g.script.len() - 1)];
    tokio::time::sleep(delay).await;
    StatusCode::from_u16(status).unwrap()
}

async fn gateway(script: Vec<(u16, Duration)>) -> (String, Gateway) {
    let g = Gateway {
        script: Arc::new(script),
        ..Default::default()
    };
    let app = Router::new().route("/sms", post(receive)).with_state(g.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/sms"), g)
}

fn policy() -> WebhookPolicy {
    WebhookPolicy {
        timeout: Duration::from_millis(300),
        retries: 2,
        backoff: Duration::from_millis(50),
    }
}

/// Logs of the current thread, for the test to read.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}

#[tokio::test]
async fn the_webhook_gets_the_code_after_retries_and_the_logs_never_do() {
    let (logs, _guard) = capture();
    let (url, g) = gateway(vec![
        (503, Duration::ZERO),
        (200, Duration::from_secs(2)), // past the timeout: retried
        (200, Duration::ZERO),
    ])
    .await;
    let sms = WebhookSms::new(&url, policy()).unwrap();
    let to = Msisdn::parse("0812-3456-789").unwrap();
    sms.send_otp(&to, "493817")
        .await
        .expect("delivered on the third attempt");

    let received = g.received.lock().unwrap().clone();
    assert_eq!(received.len(), 3, "two retries");
    let body = &received[2].1;
    assert_eq!(body["to"], "628123456789");
    assert_eq!(body["code"], "493817");
    assert!(body["message"].as_str().unwrap().contains("493817"), "{body}");
    // Backoff: at least 50 ms, then at least 100 ms (after the 300 ms timeout).
    assert!(received[1].0 - received[0].0 >= Duration::from_millis(50));
    assert!(received[2].0 - received[1].0 >= Duration::from_millis(400));

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("62812*****89"),
        "the masked number is logged: {logs}"
    );
    assert!(!logs.contains("493817"), "no code in the logs: {logs}");
    assert!(
        !logs.contains("628123456789"),
        "no whole number in the logs: {logs}"
    );
}

#[tokio::test]
async fn a_refusal_is_not_retried_and_an_outage_gives_up_after_the_retries() {
    let to = Msisdn::parse("0812-3456-789").unwrap();
    let (url, g) = gateway(vec![(400, Duration::ZERO)]).await;
    let error = WebhookSms::new(&url, policy())
        .unwrap()
        .send_otp(&to, "111111")
        .await
        .unwrap_err();
    assert!(error.to_string().contains("400"), "{error}");
    assert_eq!(g.received.lock().unwrap().len(), 1, "a 4xx is final");

    let (url, g) = gateway(vec![(500, Duration::ZERO)]).await;
    let error = WebhookSms::new(&url, policy())
        .unwrap()
        .send_otp(&to, "111111")
        .await
        .unwrap_err();
    assert!(error.to_string().contains("500"), "{error}");
    assert_eq!(g.received.lock().unwrap().len(), 3, "1 + 2 retries");

    // Nobody listens: connection errors are retried, then reported.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let sms = WebhookSms::new(&format!("http://127.0.0.1:{port}/sms?key=s3cret"), policy()).unwrap();
    let error = sms.send_otp(&to, "111111").await.unwrap_err();
    assert!(
        !error.to_string().contains("s3cret"),
        "no URL in the error: {error}"
    );
    assert!(!format!("{sms:?}").contains("s3cret"));
    assert!(WebhookSms::new("ftp://example.com/", policy()).is_err());
}
