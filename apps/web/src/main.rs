//! The browser client. Until the web client lands, this member only proves that the
//! wire contract builds into it.

fn main() {
    let _contract = events::USER_EVENTS_CHANNEL;
}
