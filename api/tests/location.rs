//! A driver's accepted `beacon_update` / `location_update` reaches JetStream `LOCATION`
//! (where the geo projection and the matcher of any process read it); a passenger's
//! position and a refused frame do not.

mod support;

use std::time::Duration;

use api::ws::session::{Dispatch, EdgeCommands};
use commands::ingress::ClientCommand;
use domain::location::{subject, Ping};
use domain::{Actor, GeoPoint, Role, UserId};
use projections::location::LocationPublisher;
use support::{app, nats_url};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drivers_pings_are_published_to_the_location_stream_and_a_passengers_are_not() {
    let app = app().await;
    let nats = async_nats::connect(nats_url())
        .await
        .expect("NATS must be running");
    let js = async_nats::jetstream::new(nats);
    let stream = format!(
        "TEST_LOCATION_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12].to_uppercase()
    );
    let publisher = LocationPublisher::new(js.clone(), &stream).await.expect("stream");
    let commands = EdgeCommands {
        bus: &app.bus,
        location: Some(&publisher),
        clock: app.clock.as_ref(),
    };
    let driver = Actor::new(UserId::from_uuid(uuid::Uuid::now_v7()), Role::Driver);
    let passenger = Actor::new(UserId::from_uuid(uuid::Uuid::now_v7()), Role::Passenger);
    let point = GeoPoint::new(-6.2, 106.8).expect("point");
    let moved = GeoPoint::new(-6.201, 106.8).expect("point");

    let ack = commands
        .dispatch(
            driver,
            "b1",
            ClientCommand::BeaconUpdate {
                is_active: true,
                point,
            },
        )
        .await;
    assert!(ack.ok, "{ack:?}");
    let s = js.get_stream(&stream).await.expect("stream");
    let last = s
        .get_last_raw_message_by_subject(&subject(&stream, driver.user_id))
        .await
        .expect("the beacon is in the stream");
    let ping: Ping = serde_json::from_slice(&last.payload).expect("a ping");
    assert_eq!(
        (ping.driver_id, ping.point, ping.is_active),
        (driver.user_id, point, Some(true))
    );

    let ack = commands
        .dispatch(
            driver,
            "l1",
            ClientCommand::LocationUpdate {
                point: moved,
                accuracy_m: None,
                recorded_at: None,
                ride_id: None,
            },
        )
        .await;
    assert!(ack.ok, "{ack:?}");
    let last = s
        .get_last_raw_message_by_subject(&subject(&stream, driver.user_id))
        .await
        .expect("the position is in the stream");
    let ping: Ping = serde_json::from_slice(&last.payload).expect("a ping");
    assert_eq!(
        (ping.point, ping.is_active),
        (moved, None),
        "a position keeps the online state"
    );

    // A passenger waiting for a ride: a position for the start rule, not a driver ping.
    let ack = commands
        .dispatch(
            passenger,
            "p1",
            ClientCommand::LocationUpdate {
                point,
                accuracy_m: None,
                recorded_at: None,
                ride_id: None,
            },
        )
        .await;
    assert!(ack.ok, "{ack:?}");
    // A passenger's beacon is refused, and nothing is published for it.
    let ack = commands
        .dispatch(
            passenger,
            "p2",
            ClientCommand::BeaconUpdate {
                is_active: true,
                point,
            },
        )
        .await;
    assert!(!ack.ok);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut s = js.get_stream(&stream).await.expect("stream");
    assert_eq!(
        s.info().await.expect("info").state.messages,
        1,
        "only the driver's subject holds a message"
    );
    let _ = js.delete_stream(&stream).await;
    app.cleanup().await;
}
