//! A stranger's first bytes: the listener's half of the handshake (hello,
//! version, nonce, the token's challenge–response) over an in-memory stream
//! that carries the input and then closes. Any input must end in a hello
//! admitted or a reason — never a panic or a hang — and no input proves the
//! token.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rayx_actors::cluster::link::{greet, Gate};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
}

fuzz_target!(|data: &[u8]| {
    let gate = Gate::new(Some(Arc::from("the cluster token")), Arc::default());
    RT.with(|rt| {
        rt.block_on(async {
            let (mut stranger, mut listener) = tokio::io::duplex(data.len() + (1 << 16));
            stranger.write_all(data).await.unwrap();
            stranger.shutdown().await.unwrap();
            let mut buf = BytesMut::new();
            let greeted = greet(&mut listener, &mut buf, &gate).await;
            assert!(greeted.is_err(), "a stranger's bytes proved the token");
            drop(stranger);
        })
    });
});
