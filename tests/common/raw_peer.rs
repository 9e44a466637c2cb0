//! A raw peer for cluster tests: frames, hellos and both halves of the
//! token handshake, written by hand so a test can send what no node would.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

/// A control-lane frame after the handshake, as a node's session writes it:
/// the sequence number of its first message (a peer's first is 1, each
/// message one more), an ack of nothing, then the messages.
pub fn control_frame(first: u64, msgs: &[rayx_actors::cluster::wire::Msg]) -> Vec<u8> {
    control_frame_acking(first, 0, msgs)
}

/// A control-lane frame whose header acks `ack`.
pub fn control_frame_acking(
    first: u64,
    ack: u64,
    msgs: &[rayx_actors::cluster::wire::Msg],
) -> Vec<u8> {
    let mut body = first.to_be_bytes().to_vec();
    body.extend_from_slice(&ack.to_be_bytes());
    body.extend(rayx_actors::cluster::wire::encode(msgs).unwrap());
    frame(&body)
}

/// A frame's messages: a handshake frame's as they are, a control frame's
/// after its header (a header starts with a zero byte, which no message
/// batch does).
fn decode_any(body: &[u8]) -> Vec<rayx_actors::cluster::wire::Msg> {
    use rayx_actors::cluster::wire::decode;
    match body.first() {
        Some(0) if body.len() >= 16 => decode(&body[16..]).unwrap(),
        _ => decode(body).unwrap(),
    }
}

/// A hello frame of node 99 (its nonce: 32 sevens, as [`shake`] expects).
pub fn hello(
    lane: rayx_actors::cluster::wire::Lane,
    version: u32,
    registry: Vec<String>,
) -> Vec<u8> {
    hello_as(rayx::NodeId(99), lane, version, registry)
}

/// A hello frame of node `id`.
pub fn hello_as(
    id: rayx::NodeId,
    lane: rayx_actors::cluster::wire::Lane,
    version: u32,
    registry: Vec<String>,
) -> Vec<u8> {
    use rayx_actors::cluster::wire::{encode, Hello, Msg, NodeInfo};
    frame(
        &encode(&[Msg::Hello(Hello {
            version,
            lane,
            node: NodeInfo {
                id,
                address: "127.0.0.1:1".into(),
                cpus: 0.0,
                head: false,
                resources: Default::default(),
            },
            registry,
            nonce: serde_bytes::ByteBuf::from(vec![7u8; 32]),
            driver: false,
            member_of: None,
        })])
        .unwrap(),
    )
}

/// Reads one frame's messages.
pub fn read_frame(s: &mut TcpStream) -> Vec<rayx_actors::cluster::wire::Msg> {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    rayx_actors::cluster::wire::decode(&body).unwrap()
}

/// Plays a connecting node: sends `hello` (as [`hello`] made it), answers
/// the listener's challenge with the token's proof; what follows (a welcome
/// or a refusal) is the caller's to read.
pub fn shake(s: &mut TcpStream, token: &str, hello_frame: &[u8]) {
    use rayx_actors::cluster::auth::{prove, Side};
    use rayx_actors::cluster::wire::{encode, Msg};
    s.write_all(hello_frame).unwrap();
    match read_frame(s).as_slice() {
        [Msg::Challenge { nonce, proof }] => {
            assert!(proof.is_some(), "the listener proves the token");
            let mine = prove(token, Side::Connector, nonce, &[7u8; 32]);
            let answer = Msg::Proof {
                proof: Some(serde_bytes::ByteBuf::from(mine)),
            };
            s.write_all(&frame(&encode(&[answer]).unwrap())).unwrap();
        }
        other => panic!("expected a challenge: {other:?}"),
    }
}

/// Plays a listening node for a connection the cluster opened: its hello,
/// the challenge, its proof, then `welcome`.
pub fn accept_shake(s: &mut TcpStream, token: &str, welcome: rayx_actors::cluster::wire::Msg) {
    use rayx_actors::cluster::auth::{prove, verify, Side};
    use rayx_actors::cluster::wire::{encode, Msg};
    let theirs = match read_frame(s).as_slice() {
        [Msg::Hello(h)] => h.nonce.to_vec(),
        other => panic!("expected a hello: {other:?}"),
    };
    let mine = vec![9u8; 32];
    let challenge = Msg::Challenge {
        nonce: serde_bytes::ByteBuf::from(mine.clone()),
        proof: Some(serde_bytes::ByteBuf::from(prove(
            token,
            Side::Listener,
            &theirs,
            &mine,
        ))),
    };
    s.write_all(&frame(&encode(&[challenge]).unwrap())).unwrap();
    match read_frame(s).as_slice() {
        [Msg::Proof { proof: Some(p) }] => {
            assert!(verify(token, Side::Connector, &mine, &theirs, p))
        }
        other => panic!("expected a proof: {other:?}"),
    }
    s.write_all(&frame(&encode(&[welcome]).unwrap())).unwrap();
}

/// Reads frames until the peer closes; returns the messages read.
pub fn read_until_closed(s: &mut TcpStream) -> Vec<rayx_actors::cluster::wire::Msg> {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    let mut msgs = Vec::new();
    let mut at = 0;
    while at + 4 <= all.len() {
        let n = u32::from_be_bytes(all[at..at + 4].try_into().unwrap()) as usize;
        if at + 4 + n > all.len() {
            break;
        }
        msgs.extend(decode_any(&all[at + 4..at + 4 + n]));
        at += 4 + n;
    }
    msgs
}

/// Reads frames until one holds a message `stop` accepts (or 20 s pass).
pub fn read_frames_until(
    s: &mut TcpStream,
    stop: impl Fn(&rayx_actors::cluster::wire::Msg) -> bool,
) -> Vec<rayx_actors::cluster::wire::Msg> {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut msgs = Vec::new();
    loop {
        let mut len = [0u8; 4];
        if s.read_exact(&mut len).is_err() {
            return msgs;
        }
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        if s.read_exact(&mut body).is_err() {
            return msgs;
        }
        let batch = decode_any(&body);
        let done = batch.iter().any(&stop);
        msgs.extend(batch);
        if done {
            return msgs;
        }
    }
}

/// The bulk-lane frame of a chunk of `object`: its message, then `data` as
/// it is (as a node writes it).
pub fn chunk_frame(
    object: rayx_actors::ids::ObjectId,
    offset: u64,
    total: u64,
    data: &[u8],
) -> Vec<u8> {
    use rayx_actors::cluster::wire::{encode, Msg};
    let head = encode(&[Msg::Chunk {
        object,
        offset,
        total,
        data: rayx_actors::value::Value::Encoded(Vec::new().into()),
    }])
    .unwrap();
    let mut f = ((4 + head.len() + data.len()) as u32)
        .to_be_bytes()
        .to_vec();
    f.extend_from_slice(&(head.len() as u32).to_be_bytes());
    f.extend_from_slice(&head);
    f.extend_from_slice(data);
    f
}

/// Joins the node at `address` as the fake node `me` on a control link (the
/// token's handshake), once welcomed.
pub fn join_control(
    address: &str,
    token: &str,
    me: &rayx_actors::cluster::wire::NodeInfo,
) -> TcpStream {
    use rayx_actors::cluster::wire::{encode, Hello, Lane, Msg, PROTOCOL_VERSION};
    let mut s = TcpStream::connect(address).unwrap();
    let hello = Msg::Hello(Hello {
        version: PROTOCOL_VERSION,
        lane: Lane::Control,
        node: me.clone(),
        registry: vec![],
        nonce: serde_bytes::ByteBuf::from(vec![7u8; 32]),
        driver: false,
        member_of: None,
    });
    shake(&mut s, token, &frame(&encode(&[hello]).unwrap()));
    read_frames_until(&mut s, |m| matches!(m, Msg::Welcome { .. }));
    s
}

/// Sends node `me`'s task running `function` on `arg`, an object of its own,
/// saying whether it `held` it (and its size), as its control message `seq`;
/// the task's number is the argument's plus 1000.
pub fn send_task_on(
    s: &mut TcpStream,
    seq: u64,
    me: rayx::NodeId,
    function: &str,
    arg: rayx_actors::ids::ObjectId,
    held: Option<u64>,
) {
    use rayx_actors::cluster::wire::Msg;
    use rayx_actors::messages::{Arg, TaskSpec};
    let spec = TaskSpec {
        task_id: rayx_actors::ids::TaskId(rayx_actors::ids::ObjectId {
            node: me,
            seq: arg.seq + 1000,
        }),
        function: function.to_string().into(),
        args: vec![Arg::Ref(arg)],
        options: Default::default(),
    };
    let held = held.map(|size| (arg, size)).into_iter().collect();
    s.write_all(&control_frame(seq, &[Msg::RunTask { spec, held }]))
        .unwrap();
}

/// A fake node `id`, listening (for the bulk links a node opens to it) on a
/// port of its own.
pub fn fake_node(
    id: rayx::NodeId,
) -> (std::net::TcpListener, rayx_actors::cluster::wire::NodeInfo) {
    let bulk = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let me = rayx_actors::cluster::wire::NodeInfo {
        id,
        address: bulk.local_addr().unwrap().to_string(),
        cpus: 0.0,
        head: false,
        resources: Default::default(),
    };
    (bulk, me)
}
