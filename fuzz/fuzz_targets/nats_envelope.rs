//! A NATS command request → `NatsEnvelope::parse` and `command_for_subject`, the two
//! parsers `commands::nats::handle_request` runs before anything reaches the bus. The
//! first byte picks the subject (served ones and some that are not). Must never panic;
//! an accepted envelope has a command id of 1 to 128 bytes.
#![no_main]

use commands::ingress::{command_for_subject, NatsEnvelope};
use libfuzzer_sys::fuzz_target;

const SUBJECTS: [&str; 11] = [
    "cmd.match.request",
    "cmd.match.cancel",
    "cmd.match.confirm",
    "cmd.ride.start",
    "cmd.ride.location",
    "cmd.ride.arrive",
    "cmd.ride.pay",
    "cmd.ride.cancel",
    "cmd.driver.beacon",
    "cmd.ride.unknown",
    "",
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let subject = SUBJECTS[usize::from(pick) % SUBJECTS.len()];
    match NatsEnvelope::parse(payload) {
        Ok(envelope) => {
            assert!((1..=128).contains(&envelope.command_id.len()));
            let _ = envelope.actor();
            match command_for_subject(subject, &envelope.data) {
                None => assert!(!subject.starts_with("cmd.") || subject.ends_with("unknown")),
                Some(Ok(_)) => {}
                Some(Err(refusal)) => assert!(!refusal.message.is_empty()),
            }
        }
        Err(refusal) => assert!(!refusal.message.is_empty()),
    }
});
