//! The transport conformance suite, run on the mock.

use coresident::conformance;
use coresident::ChannelLayout;
use coresident_mock::MockTransport;

#[test]
fn mock_refuses_garbage_rendezvous() {
    conformance::rendezvous_refuses_garbage(&mut MockTransport::new()).unwrap();
}

#[test]
fn mock_exchanges_messages_both_ways() {
    let t = MockTransport::new();
    let n = if cfg!(debug_assertions) {
        5_000
    } else {
        1_000_000
    };
    let r = conformance::exchange(t.clone(), t, ChannelLayout::symmetric(64 * 1024), n).unwrap();
    eprintln!("{r:?}");
    assert_eq!(r.messages, n);
}
