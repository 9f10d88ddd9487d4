//! The command path a client controls before AUTH: line framing (length, CR/LF/NUL checks),
//! smtp-proto's command parser, and the SASL decoders. Must never panic.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use smtp_relay::inbound::auth::{decode_login_field, decode_plain};
use smtp_relay::inbound::connection::{Connection, MAX_COMMAND_LINE};
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
        while let Ok(mut line) = conn
            .read_line(MAX_COMMAND_LINE, Duration::from_millis(50))
            .await
        {
            assert!(line.len() <= MAX_COMMAND_LINE);
            assert!(!line.contains(&b'\r') && !line.contains(&b'\n') && !line.contains(&0));
            let _ = decode_plain(&line);
            let _ = decode_login_field(&line);
            line.extend_from_slice(b"\r\n");
            let _ = smtp_proto::Request::parse(&mut line.iter());
        }
    });
});
