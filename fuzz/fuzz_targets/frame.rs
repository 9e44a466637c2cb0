//! What a peer's bytes meet after the handshake: the length-delimited codec
//! with a control lane's limit, the decoder of a frame's messages, and the
//! bulk lane's frame reader. Any input must give messages or an error —
//! never a panic, a hang, or an allocation past the frame.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rayx_actors::cluster::link::read_bulk_frame;
use rayx_actors::cluster::wire::{self, MAX_CONTROL_FRAME};
use tokio_util::codec::{Decoder, LengthDelimitedCodec};

fuzz_target!(|data: &[u8]| {
    let mut codec = LengthDelimitedCodec::builder()
        .max_frame_length(MAX_CONTROL_FRAME)
        .new_codec();
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = codec.decode(&mut buf) {
        let _ = wire::decode(&frame);
    }
    // The same bytes as one frame's body, and as a bulk frame.
    let _ = wire::decode(data);
    let _ = read_bulk_frame(bytes::Bytes::copy_from_slice(data));
});
