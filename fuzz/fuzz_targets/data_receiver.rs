//! DATA as a client sends it: whatever the bytes, the receiver never panics, and a message it
//! accepts is CRLF-only, NUL-free, with no line over 998 octets, and
//! dot-stuffing it for the upstream and reading it back gives the same bytes.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use smtp_relay::inbound::connection::{Body, Connection, DataOutcome};
use smtp_relay::outbound::upstream::dot_stuff;
use tokio::io::AsyncWriteExt;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(data.len() + 16);
        client.write_all(data).await.unwrap();
        drop(client);
        let mut conn = Connection::new(server);
        let r = conn
            .read_data(64 * 1024, Duration::from_millis(50), Duration::from_millis(100))
            .await;
        if let Ok(DataOutcome::Message(Body::Memory(m))) = r {
            for (i, &b) in m.iter().enumerate() {
                assert_ne!(b, 0);
                if b == b'\n' {
                    assert!(i > 0 && m[i - 1] == b'\r', "bare LF in accepted message");
                }
                if b == b'\r' {
                    assert_eq!(m.get(i + 1), Some(&b'\n'), "bare CR in accepted message");
                }
            }
            assert!(m.is_empty() || m.ends_with(b"\r\n"));
            // What we would send upstream reads back as exactly the same message.
            let wire = dot_stuff(&m);
            let (mut client, server) = tokio::io::duplex(wire.len() + 16);
            client.write_all(&wire).await.unwrap();
            drop(client);
            let again = Connection::new(server)
                .read_data(1 << 20, Duration::from_millis(50), Duration::from_millis(100))
                .await;
            match again {
                Ok(DataOutcome::Message(Body::Memory(m2))) => assert_eq!(m2, m, "stuffing round trip"),
                other => panic!("re-reading the stuffed message failed: {other:?}"),
            }
        }
    });
});
