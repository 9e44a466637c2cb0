//! A node link: one TCP connection to a peer, with a reader and a writer task
//! on the node's network thread.
//!
//! The writer takes every message queued since its last write (one wake-up per
//! batch), packs them into frames of many messages, and writes the frames at
//! once; a large frame (a chunk of an object) is written from its own buffer,
//! without a copy into the batch. The reader reads what the socket has, cuts it
//! into frames with tokio-util's length-delimited codec (bounded by the lane's
//! limit), decodes each and hands the batch to the node. A frame over the
//! limit or bytes that do not decode close this connection — counted, logged,
//! and harmless to every other connection.

use super::auth::{self, Side, Token};
use super::session::{self, Out, Session};
use super::tls::Tls;
use super::wire::{self, Hello, Lane, Msg, NodeInfo, Rejections};
use crate::error::Error;
use crate::ids::ObjectId;
use bytes::{BufMut, BytesMut};
use serde_bytes::ByteBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::{Decoder, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

/// How long a connection may take for its whole handshake (hello,
/// challenge, proof, welcome).
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);
/// Messages packed into one frame at most.
const BATCH: usize = 512;
/// A frame body past this is written from its own buffer, not copied.
const LARGE_BODY: usize = 64 << 10;
/// The most a bulk-lane read takes into the frame buffer.
const BULK_READ: u64 = 4 << 10;

/// What the node does with what arrives on its links.
pub trait Inbound: Send + Sync + 'static {
    /// A frame's messages arrived on `link`, in the order they were sent:
    /// each is taken from `msgs` as it is handled. If handling one panics
    /// (a bug a peer's message trips), that one is dropped, logged and
    /// counted, and this is called again with the rest.
    fn on_msgs(&self, link: &Arc<Link>, msgs: &mut std::vec::IntoIter<Msg>);
    /// `link` closed: by the peer, by an error, or for bad input (`reason`).
    fn on_close(&self, link: &Arc<Link>, reason: Option<&str>);
    /// `msg`, queued on `link`, was not sent (`why`). Whoever waits for its
    /// answer is told here; nothing is dropped without a word.
    fn not_sent(&self, _link: &Arc<Link>, _msg: Msg, _why: NotSent) {}
    /// Where the `len` bytes of a chunk of `object` at `offset` go, so the
    /// bulk reader reads them from the socket straight into place: the
    /// buffer, lent, and the position in it. `None`: read them as a message.
    fn chunk_target(
        &self,
        _link: &Link,
        _object: ObjectId,
        _offset: u64,
        _total: u64,
        _len: usize,
    ) -> Option<(Vec<u8>, usize)> {
        None
    }
    /// The bytes of a chunk landed in a lent buffer (or the read failed:
    /// `len` 0); the buffer goes back.
    fn chunk_landed(&self, _link: &Link, _object: ObjectId, _buf: Vec<u8>, _len: usize) {}
}

/// Why a message was not sent (see [`Inbound::not_sent`]).
#[derive(Debug, Clone)]
pub enum NotSent {
    /// Alone it is over the frame limit.
    TooLarge(String),
    /// It could not be encoded.
    Unencodable(String),
}

impl std::fmt::Display for NotSent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotSent::TooLarge(why) | NotSent::Unencodable(why) => f.write_str(why),
        }
    }
}

/// One connection to a peer.
pub struct Link {
    /// The peer, as its hello or welcome described it.
    pub peer: NodeInfo,
    /// What the connection carries.
    pub lane: Lane,
    /// A number unique in this process, to tell links apart.
    pub serial: u64,
    tx: mpsc::UnboundedSender<Out>,
    /// A control link's session with its peer: its queue, kept across links.
    session: Option<Arc<Session>>,
    closed: AtomicBool,
    /// Stops the reader: a peer gone silent never closes its socket.
    abort: CancellationToken,
    /// Stops a session link's writer (its queue stays with the session).
    stop: CancellationToken,
    /// Set when the writer has stopped (everything queued before a close is
    /// written by then).
    written: (parking_lot::Mutex<bool>, parking_lot::Condvar),
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Link({:?} to {} at {})",
            self.lane, self.peer.id, self.peer.address
        )
    }
}

static SERIAL: AtomicU64 = AtomicU64::new(1);

impl Link {
    /// A new open link to `peer` on `lane`, and the receiving end of its
    /// queue (what its writer drains) unless it sends a `session`'s.
    fn open(
        peer: NodeInfo,
        lane: Lane,
        session: Option<Arc<Session>>,
    ) -> (Arc<Link>, Option<mpsc::UnboundedReceiver<Out>>) {
        let (tx, rx) = match &session {
            Some(s) => (s.sender(), None),
            None => {
                let (tx, rx) = mpsc::unbounded_channel();
                (tx, Some(rx))
            }
        };
        let link = Arc::new(Link {
            peer,
            lane,
            serial: SERIAL.fetch_add(1, Ordering::Relaxed),
            tx,
            session,
            closed: AtomicBool::new(false),
            abort: CancellationToken::new(),
            stop: CancellationToken::new(),
            written: Default::default(),
        });
        (link, rx)
    }

    /// A link with no socket behind it, for tests of what uses links.
    #[cfg(test)]
    pub(crate) fn for_test(lane: Lane) -> (Arc<Link>, mpsc::UnboundedReceiver<Out>) {
        Link::for_test_to(lane, crate::ids::NodeId(7))
    }

    /// A link with no socket behind it to `peer`, for tests.
    #[cfg(test)]
    pub(crate) fn for_test_to(
        lane: Lane,
        peer: crate::ids::NodeId,
    ) -> (Arc<Link>, mpsc::UnboundedReceiver<Out>) {
        let peer = NodeInfo {
            id: peer,
            address: "x:1".into(),
            cpus: 1.0,
            head: false,
            resources: Default::default(),
        };
        let (link, rx) = Link::open(peer, lane, None);
        (link, rx.expect("a queue of its own"))
    }

    /// Queues a message; false if the link is closed. A session's link
    /// queues it in the session, for whichever of its links writes next.
    pub fn send(&self, msg: Msg) -> bool {
        (self.session.is_some() || !self.is_closed()) && self.tx.send(Out::Msg(msg)).is_ok()
    }

    /// The session it carries, if any.
    pub(crate) fn session(&self) -> Option<&Arc<Session>> {
        self.session.as_ref()
    }

    /// Whether the link is closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Closes the link: queued messages are written, then the socket
    /// closes. A session's link stops after the frames it is writing; what
    /// is queued stays for the session's next link.
    pub fn close(&self) {
        if self.session.is_some() {
            self.stop.cancel();
        } else {
            let _ = self.tx.send(Out::Close);
        }
    }

    /// Closes the link after what is queued now: a session's too, whose
    /// writer stops there (for a node that stops in order).
    pub fn finish(&self) {
        let _ = self.tx.send(Out::Close);
    }

    /// Waits up to `timeout` until the writer has stopped — after a
    /// [`close`](Self::close), until what was queued before it is written.
    /// Not on the network thread (the writer runs there). False on timeout.
    pub fn wait_written(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut done = self.written.0.lock();
        while !*done {
            if self.written.1.wait_until(&mut done, deadline).timed_out() {
                return *done;
            }
        }
        true
    }

    /// Closes the link at once, reader included, for a peer that went silent
    /// (declared dead): its handler hears `on_close` with `reason`.
    pub fn abort(&self) {
        self.close();
        self.abort.cancel();
    }
}

fn max_frame(lane: Lane) -> usize {
    match lane {
        Lane::Bulk => wire::MAX_BULK_FRAME,
        _ => wire::MAX_CONTROL_FRAME,
    }
}

fn codec(lane: Lane) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(max_frame(lane))
        .new_codec()
}

/// What guards a node's connections: the cluster token, the count of
/// connections refused for bad input, and the handshakes under way.
pub struct Gate {
    /// The cluster token; `None`: this node neither asks for nor proves one.
    pub token: Option<Token>,
    /// Connections closed for bad input, by reason.
    pub rejections: Arc<Rejections>,
    /// TLS for every connection, if the cluster uses it.
    pub tls: Option<Arc<Tls>>,
    /// Handshakes under way.
    pending: parking_lot::Mutex<Pending>,
    next: AtomicU64,
}

/// The handshakes under way at a gate, oldest first: each one's id, what
/// cancels it, and the bytes it read.
#[derive(Default)]
struct Pending {
    shakes: std::collections::VecDeque<(u64, CancellationToken, usize)>,
}

impl Pending {
    /// The bytes they read, together (at most [`MAX_HANDSHAKES`] summed).
    fn bytes(&self) -> usize {
        self.shakes.iter().map(|s| s.2).sum()
    }

    /// Cancels the oldest handshakes until at most `count` are left, then
    /// those holding the most bytes until their bytes fit
    /// [`HANDSHAKE_BYTES`]: a real peer's hello is small and quick, so
    /// strangers that send much and stop cut off each other, not it.
    fn cut_to(&mut self, count: usize) {
        while self.shakes.len() > count {
            let Some((_, oldest, _)) = self.shakes.pop_front() else {
                return;
            };
            oldest.cancel();
        }
        while self.bytes() > HANDSHAKE_BYTES {
            // The first of the largest: the oldest among equals.
            let largest = self
                .shakes
                .iter()
                .enumerate()
                .max_by_key(|(i, s)| (s.2, std::cmp::Reverse(*i)))
                .map(|(i, _)| i);
            let Some((_, cut, _)) = largest.and_then(|i| self.shakes.remove(i)) else {
                return;
            };
            cut.cancel();
        }
    }
}

/// Handshakes a node runs at once. One more cancels the oldest: a flood of
/// slow strangers can neither pin the node's memory nor keep a real peer —
/// whose handshake takes a round trip or two — from getting through.
pub const MAX_HANDSHAKES: usize = 256;

/// The bytes the handshakes under way may have read, together (each may read
/// [`wire::PREAUTH_FRAME`]); past it, those holding the most are cut off.
pub const HANDSHAKE_BYTES: usize = 16 << 20;

/// Why a handshake was cancelled by the gate.
const CUT_OFF: &str =
    "too many handshakes at once: the oldest, or the one holding the most bytes, was cut off";

impl Gate {
    /// A gate with this token (and no TLS).
    pub fn new(token: Option<Token>, rejections: Arc<Rejections>) -> Arc<Gate> {
        Gate::with_tls(token, rejections, None)
    }

    /// A gate with this token and TLS.
    pub fn with_tls(
        token: Option<Token>,
        rejections: Arc<Rejections>,
        tls: Option<Arc<Tls>>,
    ) -> Arc<Gate> {
        Arc::new(Gate {
            token,
            rejections,
            tls,
            pending: Default::default(),
            next: AtomicU64::new(0),
        })
    }

    /// A handshake starts: its id and what cancels it; the oldest one
    /// under way is cancelled if there are too many.
    fn begin(&self) -> (u64, CancellationToken) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let cancel = CancellationToken::new();
        let mut pending = self.pending.lock();
        pending.shakes.push_back((id, cancel.clone(), 0));
        pending.cut_to(MAX_HANDSHAKES);
        (id, cancel)
    }

    /// Handshake `id` has read `bytes` so far; those holding the most are
    /// cut off while all of them have read more than [`HANDSHAKE_BYTES`].
    fn read(&self, id: u64, bytes: usize) {
        let mut pending = self.pending.lock();
        if let Some(shake) = pending.shakes.iter_mut().find(|s| s.0 == id) {
            shake.2 = bytes;
        }
        pending.cut_to(MAX_HANDSHAKES);
    }

    fn end(&self, id: u64) {
        self.pending.lock().shakes.retain(|s| s.0 != id);
    }

    /// The handshakes under way and their bytes read (for tests).
    #[doc(hidden)]
    pub fn under_way(&self) -> (usize, usize) {
        let pending = self.pending.lock();
        (pending.shakes.len(), pending.bytes())
    }
}

/// Writes one frame (a handshake message) straight to the socket.
async fn write_frame<S: AsyncWrite + Unpin>(stream: &mut S, msg: &Msg) -> Result<(), String> {
    let body = wire::encode(std::slice::from_ref(msg)).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    stream.write_all(&out).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())
}

/// Reads one frame holding one message, of `limit` bytes at most; what was
/// read past it stays in `buf` for the link's reader. A listener's
/// handshake tells its gate (`tracked`) how much it has read.
async fn read_one<S: AsyncRead + Unpin>(
    stream: &mut S,
    limit: usize,
    buf: &mut BytesMut,
    tracked: Option<(&Gate, u64)>,
) -> Result<Msg, String> {
    let mut codec = LengthDelimitedCodec::builder()
        .max_frame_length(limit)
        .new_codec();
    let mut msgs = loop {
        match codec.decode(buf) {
            Ok(Some(frame)) => break wire::decode(&frame)?,
            Ok(None) => {}
            Err(e) => return Err(format!("frame over the limit: {e}")),
        }
        match stream.read_buf(buf).await {
            Ok(0) => return Err(CLOSED_MID_HANDSHAKE.to_string()),
            Ok(_) => {
                if let Some((gate, id)) = tracked {
                    gate.read(id, buf.len());
                }
            }
            Err(e) => return Err(format!("read failed: {e}")),
        }
    };
    if msgs.len() != 1 {
        return Err(format!(
            "bad handshake: a handshake frame holds one message, not {}",
            msgs.len()
        ));
    }
    Ok(msgs.pop().expect("one message"))
}

/// Tells the peer why, and fails with the same reason.
async fn refuse<T, S: AsyncWrite + Unpin>(stream: &mut S, reason: String) -> Result<T, String> {
    let _ = write_frame(
        stream,
        &Msg::Refused {
            reason: reason.clone(),
        },
    )
    .await;
    Err(reason)
}

/// What a listener's read ends with when the connector closes mid-handshake.
const CLOSED_MID_HANDSHAKE: &str = "closed during the handshake";

/// Why an attempt to connect failed: what whoever tries again decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Nothing listens at the address: the OS refused the connection.
    NobodyListens,
    /// A step (the connection, TLS, an answer of the handshake) had no
    /// answer in time, or the listener closed the connection mid-handshake
    /// (a head busy with a flood of strangers cuts handshakes off).
    NoAnswer,
    /// The listener answered and refused, saying why.
    Refused,
    /// Anything else: a reset, a TLS or authentication failure, a bad answer.
    Other,
}

/// A failed attempt to connect: the error for the user (the address and the
/// cause), and the kind of failure.
#[derive(Debug)]
pub struct Failed {
    /// `ClusterUnreachable`, or `Unauthenticated` for a failed authentication.
    pub error: Error,
    /// What kind of failure it was.
    pub failure: Failure,
}

impl From<Failed> for Error {
    fn from(f: Failed) -> Error {
        f.error
    }
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

/// Connects to `address` and says `hello`, proving the token (and checking
/// the listener's proof); the peer's welcome names it, and `session` picks
/// the session the link carries for that peer (none for a link of its own).
/// Fails within the handshake deadline with the address and the cause; a
/// failed authentication is `Unauthenticated`.
pub async fn connect(
    address: &str,
    hello: Hello,
    inbound: Arc<dyn Inbound>,
    gate: &Arc<Gate>,
    session: impl FnOnce(&NodeInfo) -> Option<Arc<Session>> + Send,
) -> Result<(Arc<Link>, Vec<NodeInfo>), Failed> {
    connect_within(address, hello, inbound, gate, session, HANDSHAKE_DEADLINE).await
}

/// [`connect`], failing also when a step of the handshake (the connection,
/// TLS, each answer) has no answer within `step`: a connection that carries
/// nothing gives way early, a slow one that answers goes on (within the
/// handshake deadline in all).
pub async fn connect_within(
    address: &str,
    hello: Hello,
    inbound: Arc<dyn Inbound>,
    gate: &Arc<Gate>,
    session: impl FnOnce(&NodeInfo) -> Option<Arc<Session>> + Send,
    step: Duration,
) -> Result<(Arc<Link>, Vec<NodeInfo>), Failed> {
    let step = step.min(HANDSHAKE_DEADLINE);
    let unreachable = |(failure, cause): (Failure, String)| {
        let error = if cause.contains("authentication failed") {
            Error::Unauthenticated {
                address: address.to_string(),
                cause,
            }
        } else {
            Error::ClusterUnreachable {
                address: address.to_string(),
                cause,
            }
        };
        Failed { error, failure }
    };
    let no_answer = |cause: String| unreachable((Failure::NoAnswer, cause));
    let stream = tokio::time::timeout(step, TcpStream::connect(address))
        .await
        .map_err(|_| no_answer(format!("no connection within {step:?}")))?
        .map_err(|e| {
            let failure = match e.kind() {
                std::io::ErrorKind::ConnectionRefused => Failure::NobodyListens,
                _ => Failure::Other,
            };
            unreachable((failure, e.to_string()))
        })?;
    let _ = stream.set_nodelay(true);
    match &gate.tls {
        None => shake_hands(stream, hello, inbound, gate, session, step).await,
        Some(tls) => {
            let tls = tokio::time::timeout(step, tls.connector.connect(Tls::server_name(), stream))
                .await
                .map_err(|_| no_answer(format!("no TLS handshake within {step:?}")))?
                .map_err(|e| {
                    unreachable((
                        Failure::Other,
                        format!(
                    "TLS handshake failed (does the cluster use TLS, with this certificate?): {e}"
                ),
                    ))
                })?;
            shake_hands(
                tokio_rustls::TlsStream::from(tls),
                hello,
                inbound,
                gate,
                session,
                step,
            )
            .await
        }
    }
    .map_err(unreachable)
}

/// The listener's next answer in a handshake, within `step`.
async fn answer_within<S: AsyncRead + Unpin>(
    stream: &mut S,
    limit: usize,
    buf: &mut BytesMut,
    step: Duration,
) -> Result<Msg, (Failure, String)> {
    match tokio::time::timeout(step, read_one(stream, limit, buf, None)).await {
        Ok(Ok(msg)) => Ok(msg),
        Ok(Err(e)) if e == CLOSED_MID_HANDSHAKE => Err((Failure::NoAnswer, e)),
        Ok(Err(e)) => Err((Failure::Other, e)),
        Err(_) => Err((
            Failure::NoAnswer,
            format!("no handshake within {step:?}: an answer never came"),
        )),
    }
}

/// An error of the handshake that is neither a refusal nor for want of an
/// answer.
fn other(cause: impl ToString) -> (Failure, String) {
    (Failure::Other, cause.to_string())
}

/// The connecting side's handshake on an open connection: hello, the
/// listener's proof checked, our proof, its welcome — each answer within
/// `step`.
async fn shake_hands<S: Conn>(
    mut stream: S,
    mut hello: Hello,
    inbound: Arc<dyn Inbound>,
    gate: &Arc<Gate>,
    session: impl FnOnce(&NodeInfo) -> Option<Arc<Session>> + Send,
    step: Duration,
) -> Result<(Arc<Link>, Vec<NodeInfo>), (Failure, String)> {
    let lane = hello.lane;
    let mine = auth::nonce();
    hello.nonce = ByteBuf::from(mine.clone());
    let mut buf = BytesMut::with_capacity(64 << 10);
    let shake = async {
        write_frame(&mut stream, &Msg::Hello(hello))
            .await
            .map_err(other)?;
        let (theirs, proof) =
            match answer_within(&mut stream, wire::PREAUTH_FRAME, &mut buf, step).await? {
                Msg::Challenge { nonce, proof } => (nonce, proof),
                Msg::Refused { reason } => {
                    return Err((Failure::Refused, format!("refused: {reason}")))
                }
                msg => return Err(other(format!("answered its hello with {}", kind_of(&msg)))),
            };
        let answer = match (gate.token.as_deref(), proof) {
            (Some(t), Some(p)) if auth::verify(t, Side::Listener, &mine, &theirs, &p) => Some(
                ByteBuf::from(auth::prove(t, Side::Connector, &theirs, &mine)),
            ),
            (None, None) => None,
            (Some(_), Some(_)) => {
                let why = "authentication failed: wrong cluster token (the listener's proof \
                           does not match this node's token)";
                return refuse(&mut stream, why.into()).await.map_err(other);
            }
            (Some(_), None) => {
                let why = "authentication failed: the listener has no cluster token and this \
                           node requires one";
                return refuse(&mut stream, why.into()).await.map_err(other);
            }
            (None, Some(_)) => {
                let why = "authentication failed: the cluster requires a token and this node \
                           has none (set RAYX_TOKEN, or RAYX_TOKEN_FILE, or put it in ~/.rayx/token)";
                return refuse(&mut stream, why.into()).await.map_err(other);
            }
        };
        write_frame(&mut stream, &Msg::Proof { proof: answer })
            .await
            .map_err(other)?;
        match answer_within(&mut stream, max_frame(lane), &mut buf, step).await? {
            Msg::Welcome { node, cluster } => Ok((node, cluster)),
            Msg::Refused { reason } => Err((Failure::Refused, format!("refused: {reason}"))),
            msg => Err(other(format!("answered its proof with {}", kind_of(&msg)))),
        }
    };
    let (node, cluster) = tokio::time::timeout(HANDSHAKE_DEADLINE, shake)
        .await
        .map_err(|_| {
            (
                Failure::NoAnswer,
                format!("no handshake within {HANDSHAKE_DEADLINE:?}"),
            )
        })??;
    let session = session(&node);
    if let Some(s) = session.as_ref().filter(|s| s.peer != node.id) {
        // The peer died and another node took its address: not its session.
        return Err(other(format!("{} answers there, not {}", node.id, s.peer)));
    }
    let link = start(
        stream,
        buf,
        (node, lane, session),
        inbound,
        gate.rejections.clone(),
    );
    Ok((link, cluster))
}

/// What a listener asks of the node about a new connection's hello.
pub trait Admit: Send + Sync + 'static {
    /// Accepts (the welcome: this node and, for a join, the cluster) or
    /// refuses (why) an authenticated hello.
    fn admit(&self, hello: &Hello) -> Result<(NodeInfo, Vec<NodeInfo>), String>;
    /// The link of an admitted hello is up (a join is announced now).
    fn admitted(&self, link: &Arc<Link>, hello: Hello);
    /// The session an admitted control link sends and receives in.
    fn session(&self, _hello: &Hello) -> Option<Arc<Session>> {
        None
    }
}

/// Serves one accepted connection: its hello and the token's
/// challenge–response within the deadline, then its traffic. A stranger, a
/// wrong token or bad bytes are refused (saying why), counted and closed;
/// past [`MAX_HANDSHAKES`] at once, the oldest handshake is cut off.
pub async fn serve(
    mut stream: TcpStream,
    admit: Arc<dyn Admit>,
    inbound: Arc<dyn Inbound>,
    gate: Arc<Gate>,
) {
    let _ = stream.set_nodelay(true);
    // Counted from the first byte, TLS included.
    let (id, cancel) = gate.begin();
    let Some(tls) = gate.tls.clone() else {
        return admit_on(stream, admit, inbound, gate, (id, cancel)).await;
    };
    // A peer speaking plain frames to a TLS cluster is told so, in plain
    // frames (a TLS record starts with 0x16; a frame with its length).
    let mut first = [0u8; 1];
    let peek = tokio::time::timeout(HANDSHAKE_DEADLINE, stream.peek(&mut first));
    let peeked = tokio::select! {
        r = peek => r,
        _ = cancel.cancelled() => {
            gate.end(id);
            gate.rejections.count(CUT_OFF);
            return;
        }
    };
    match peeked {
        Ok(Ok(1)) if first[0] != 0x16 => {
            gate.end(id);
            let why = "this cluster uses TLS: join it with its certificate (RAYX_TLS=1, or \
                       RAYX_TLS_CERT and RAYX_TLS_KEY)";
            return reject(&mut stream, &gate.rejections, why.to_string()).await;
        }
        Ok(Ok(1)) => {}
        _ => {
            gate.end(id);
            gate.rejections
                .count(&format!("no handshake within {HANDSHAKE_DEADLINE:?}"));
            return;
        }
    }
    let accept = tokio::time::timeout(HANDSHAKE_DEADLINE, tls.acceptor.accept(stream));
    let accepted = tokio::select! {
        r = accept => r,
        _ = cancel.cancelled() => {
            gate.end(id);
            gate.rejections.count(CUT_OFF);
            return;
        }
    };
    match accepted {
        Ok(Ok(tls)) => {
            let tls = tokio_rustls::TlsStream::from(tls);
            admit_on(tls, admit, inbound, gate, (id, cancel)).await
        }
        Ok(Err(e)) => {
            gate.end(id);
            tracing::warn!("rayx: closing a connection: TLS handshake failed: {e}");
            gate.rejections.count("TLS handshake failed");
        }
        Err(_) => {
            gate.end(id);
            gate.rejections
                .count(&format!("no handshake within {HANDSHAKE_DEADLINE:?}"));
        }
    }
}

/// The listener's handshake and admission on an accepted connection.
async fn admit_on<S: Conn>(
    mut stream: S,
    admit: Arc<dyn Admit>,
    inbound: Arc<dyn Inbound>,
    gate: Arc<Gate>,
    (id, cancel): (u64, CancellationToken),
) {
    let mut buf = BytesMut::with_capacity(8 << 10);
    let shake = tokio::time::timeout(
        HANDSHAKE_DEADLINE,
        greet_as(&mut stream, &mut buf, &gate, Some(id)),
    );
    let greeted = tokio::select! {
        r = shake => r.unwrap_or_else(|_| Err(format!("no handshake within {HANDSHAKE_DEADLINE:?}"))),
        _ = cancel.cancelled() => Err(CUT_OFF.to_string()),
    };
    gate.end(id);
    let hello = match greeted {
        Ok(h) => h,
        Err(reason) => return reject(&mut stream, &gate.rejections, reason).await,
    };
    match admit.admit(&hello) {
        Err(reason) => reject(&mut stream, &gate.rejections, reason).await,
        Ok((me, cluster)) => {
            let welcome = Msg::Welcome { node: me, cluster };
            if write_frame(&mut stream, &welcome).await.is_err() {
                return;
            }
            let session = admit.session(&hello);
            let link = start(
                stream,
                buf,
                (hello.node.clone(), hello.lane, session),
                inbound,
                gate.rejections.clone(),
            );
            admit.admitted(&link, hello);
        }
    }
}

/// The listener's half of the handshake: a hello of the right version, then
/// the token's challenge–response. Public for the fuzz target, which drives
/// it over an in-memory stream.
#[doc(hidden)]
pub async fn greet<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    gate: &Gate,
) -> Result<Hello, String> {
    greet_as(stream, buf, gate, None).await
}

/// [`greet`], as handshake `id` of `gate` (which counts the bytes it reads).
async fn greet_as<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    gate: &Gate,
    id: Option<u64>,
) -> Result<Hello, String> {
    let tracked = id.map(|id| (gate, id));
    let hello = match read_one(stream, wire::PREAUTH_FRAME, buf, tracked).await? {
        Msg::Hello(h) => h,
        other => {
            return Err(format!(
                "no hello: the first message was {}",
                kind_of(&other)
            ))
        }
    };
    if hello.version != wire::PROTOCOL_VERSION {
        return Err(format!(
            "wrong protocol version: {} (this node speaks {})",
            hello.version,
            wire::PROTOCOL_VERSION
        ));
    }
    if hello.nonce.len() != auth::NONCE {
        return Err(format!(
            "bad hello: a nonce of {} bytes, not {}",
            hello.nonce.len(),
            auth::NONCE
        ));
    }
    let mine = auth::nonce();
    let proof = gate
        .token
        .as_deref()
        .map(|t| ByteBuf::from(auth::prove(t, Side::Listener, &hello.nonce, &mine)));
    let challenge = Msg::Challenge {
        nonce: ByteBuf::from(mine.clone()),
        proof,
    };
    write_frame(stream, &challenge).await?;
    let answer = read_one(stream, wire::PREAUTH_FRAME, buf, tracked).await?;
    let failed = |why: &str| Err(format!("authentication failed: {why}"));
    match (answer, gate.token.as_deref()) {
        (Msg::Proof { proof: Some(p) }, Some(t)) => {
            if auth::verify(t, Side::Connector, &mine, &hello.nonce, &p) {
                Ok(hello)
            } else {
                failed("wrong cluster token")
            }
        }
        (Msg::Proof { proof: None }, None) => Ok(hello),
        (Msg::Proof { proof: None }, Some(_)) => {
            failed("this cluster requires a token and the peer presented none")
        }
        (Msg::Proof { proof: Some(_) }, None) => {
            failed("the peer presented a token and this node has none")
        }
        (Msg::Refused { reason }, _) => failed(&format!("the peer refused: {reason}")),
        (other, _) => Err(format!("no proof: the peer sent {}", kind_of(&other))),
    }
}

async fn reject<S: Conn>(stream: &mut S, rejections: &Rejections, reason: String) {
    tracing::warn!(
        peer = ?stream.peer(),
        "rayx: closing a connection: {reason}"
    );
    rejections.count(&reason);
    let _ = write_frame(stream, &Msg::Refused { reason }).await;
    let _ = stream.shutdown().await;
}

/// A connection a link can run on: plain TCP, or TLS over it.
pub trait Conn: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Its reading half.
    type R: AsyncRead + Unpin + Send + 'static;
    /// Its writing half.
    type W: AsyncWrite + Unpin + Send + 'static;
    /// Splits it (plain TCP without a lock; TLS shares one stream).
    fn halves(self) -> (Self::R, Self::W);
    /// The peer's address, for logs.
    fn peer(&self) -> Option<std::net::SocketAddr>;
}

impl Conn for TcpStream {
    type R = OwnedReadHalf;
    type W = OwnedWriteHalf;
    fn halves(self) -> (OwnedReadHalf, OwnedWriteHalf) {
        self.into_split()
    }
    fn peer(&self) -> Option<std::net::SocketAddr> {
        self.peer_addr().ok()
    }
}

/// Either side of TLS (tokio-rustls' own enum of the client and server streams).
impl Conn for tokio_rustls::TlsStream<TcpStream> {
    type R = tokio::io::ReadHalf<Self>;
    type W = tokio::io::WriteHalf<Self>;
    fn halves(self) -> (Self::R, Self::W) {
        tokio::io::split(self)
    }
    fn peer(&self) -> Option<std::net::SocketAddr> {
        self.get_ref().0.peer_addr().ok()
    }
}

/// An in-memory stream, for the fuzz target and tests.
impl Conn for tokio::io::DuplexStream {
    type R = tokio::io::ReadHalf<Self>;
    type W = tokio::io::WriteHalf<Self>;
    fn halves(self) -> (Self::R, Self::W) {
        tokio::io::split(self)
    }
    fn peer(&self) -> Option<std::net::SocketAddr> {
        None
    }
}

fn start<S: Conn>(
    stream: S,
    buf: BytesMut,
    (peer, lane, session): (NodeInfo, Lane, Option<Arc<Session>>),
    inbound: Arc<dyn Inbound>,
    rejections: Arc<Rejections>,
) -> Arc<Link> {
    let (rd, wr) = stream.halves();
    let (link, rx) = Link::open(peer, lane, session);
    tokio::spawn(write_loop(wr, rx, link.clone(), inbound.clone()));
    tokio::spawn(read_loop(rd, buf, link.clone(), inbound, rejections));
    link
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut rd: R,
    mut buf: BytesMut,
    link: Arc<Link>,
    inbound: Arc<dyn Inbound>,
    rejections: Arc<Rejections>,
) {
    let reading = read_frames(&mut rd, &mut buf, &link, inbound.as_ref(), &rejections);
    let bad = tokio::select! {
        bad = reading => bad,
        _ = link.abort.cancelled() => Some(String::new()),
    };
    // An abort is this node's choice (a silent peer), not the peer's fault.
    let bad = bad.filter(|b| !b.is_empty());
    if let Some(reason) = &bad {
        tracing::warn!(
            "rayx: closing the {:?} link of {}: {reason}",
            link.lane,
            link.peer.id
        );
        rejections.count(reason);
    }
    // Release pairs with `is_closed`'s Acquire: whoever sees the link closed
    // sees it after this reader stopped handing messages in.
    link.closed.store(true, Ordering::Release);
    link.close();
    inbound.on_close(&link, bad.as_deref());
}

/// Reads and hands in frames until the socket closes (`None`) or a peer's
/// bad input (the reason).
pub(super) async fn read_frames<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    link: &Arc<Link>,
    inbound: &dyn Inbound,
    rejections: &Rejections,
) -> Option<String> {
    let mut codec = codec(link.lane);
    // The codec has taken a frame's length from `buf` and waits for the rest
    // of that frame: `buf` starts mid-frame, not at a chunk's head.
    let mut mid_frame = false;
    'read: loop {
        loop {
            if link.lane == Lane::Bulk && !mid_frame {
                match read_chunk_in_place(rd, buf, link, inbound).await {
                    Ok(InPlace::Landed) => continue,
                    // Read on before the codec sees the frame's length: it
                    // would make room for the whole chunk in `buf`.
                    Ok(InPlace::NeedMore) => break,
                    Ok(InPlace::Frame) => {}
                    Err(reason) => break 'read reason,
                }
            }
            match codec.decode(buf) {
                Ok(None) => {
                    // On the bulk lane the codec is handed a frame's start
                    // with its length (4 bytes at least): it took the length
                    // and waits for the rest.
                    mid_frame = true;
                    break;
                }
                Ok(Some(frame)) => {
                    mid_frame = false;
                    // A session's messages are taken and handed in under its
                    // lock: of two links' readers, one at a time, in order.
                    let _delivering = link.session.as_ref().map(|s| s.delivering());
                    let decoded = match &link.session {
                        _ if link.lane == Lane::Bulk => read_bulk_frame(frame.freeze()),
                        Some(s) => read_session_frame(s, &frame),
                        None => wire::decode(&frame),
                    };
                    match decoded {
                        Ok(msgs) if msgs.is_empty() => {}
                        Ok(msgs) => {
                            if let Err(reason) = hand_in(inbound, link, msgs, rejections) {
                                break 'read Some(reason);
                            }
                        }
                        Err(reason) => break 'read Some(reason),
                    }
                }
                Err(e) => break 'read Some(format!("frame over the limit: {e}")),
            }
        }
        // On the bulk lane a read stops short of a chunk's bytes, so that
        // they land in place (a chunk's head is a few dozen bytes).
        let read = if link.lane == Lane::Bulk {
            (&mut *rd).take(BULK_READ).read_buf(buf).await
        } else {
            rd.read_buf(buf).await
        };
        match read {
            Ok(0) | Err(_) => break None,
            Ok(_) => {}
        }
    }
}

/// Hands a frame's messages in. A bug a message trips (a panic) drops that
/// message alone, logged and counted: never the node, its link, or the
/// messages after it in the frame (which a session has taken as received).
/// A panic outside any message's handling closes the link (`Err`).
fn hand_in(
    inbound: &dyn Inbound,
    link: &Arc<Link>,
    msgs: Vec<Msg>,
    rejections: &Rejections,
) -> Result<(), String> {
    let mut rest = msgs.into_iter();
    loop {
        let before = rest.len();
        let panicked = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            inbound.on_msgs(link, &mut rest)
        })) {
            Ok(()) => return Ok(()),
            Err(panic) => panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default(),
        };
        if rest.len() == before {
            return Err(format!("a frame made the node panic: {panicked}"));
        }
        tracing::error!(
            "rayx: a message from {} on its {:?} link made this node panic; it is dropped: {panicked}",
            link.peer.id,
            link.lane
        );
        rejections.count("a message made the node panic");
        if rest.len() == 0 {
            return Ok(());
        }
    }
}

/// A session's control frame: its header read into the session (the ack,
/// and which messages were had already), and the messages not had yet.
fn read_session_frame(s: &Arc<Session>, frame: &[u8]) -> Result<Vec<Msg>, String> {
    let (first, ack, body) = session::split(frame)?;
    let mut msgs = wire::decode(body)?;
    let had = s.received(first, msgs.len() as u64, ack)?;
    msgs.drain(..had);
    if s.ack_due() {
        let s = s.clone();
        tokio::spawn(async move {
            tokio::time::sleep(session::ACK_DELAY).await;
            s.ack_if_needed();
        });
    }
    Ok(msgs)
}

/// Writes a session's frames not acknowledged yet (a new link's first
/// bytes), each with the ack as it is now.
async fn resend<W: AsyncWrite + Unpin>(
    wr: &mut W,
    s: &Session,
    stop: &CancellationToken,
) -> std::io::Result<()> {
    for (first, body) in s.resend() {
        let mut head = ((session::HEADER + body.len()) as u32)
            .to_be_bytes()
            .to_vec();
        head.extend_from_slice(&session::header(first, s.ack_now()));
        put(wr, &head, stop).await?;
        put(wr, &body, stop).await?;
    }
    flush(wr, stop).await
}

pub(super) async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    rx: Option<mpsc::UnboundedReceiver<Out>>,
    link: Arc<Link>,
    inbound: Arc<dyn Inbound>,
) {
    let session = link.session.clone();
    let taken = match (rx, &session) {
        (Some(rx), _) => Some(rx),
        // One writer at a time sends a session's queue.
        (None, Some(s)) => s.take_queue(&link.stop).await,
        (None, None) => None,
    };
    let Some(mut rx) = taken else {
        return stopped(&mut wr, &link).await;
    };
    if let Some(s) = &session {
        if resend(&mut wr, s, &link.stop).await.is_err() {
            s.hand_back(rx);
            // A writer that cannot write stops its reader too: the node
            // hears the link closed, and opens another.
            link.abort.cancel();
            return stopped(&mut wr, &link).await;
        }
    }
    let header = if session.is_some() {
        session::HEADER
    } else {
        0
    };
    let limit = max_frame(link.lane) - header;
    let mut batch: Vec<Out> = Vec::with_capacity(BATCH);
    let mut msgs: Vec<Msg> = Vec::with_capacity(BATCH);
    let mut out = BytesMut::with_capacity(64 << 10);
    let mut failed = false;
    'write: loop {
        let stale = session.as_ref().and_then(|s| s.stale_at());
        let got = tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => n,
            _ = link.stop.cancelled() => 0,
            _ = until(stale) => {
                if session.as_ref().and_then(|s| s.stale_at()).is_some_and(|t| t <= std::time::Instant::now()) {
                    // Frames wait for an ack nobody sends: a break only the
                    // peer saw. Another link takes the session.
                    tracing::warn!(
                        "rayx: no ack from {} for {:?}: opening another link",
                        link.peer.id,
                        session.as_ref().map_or(session::STALE, |s| s.stale)
                    );
                    failed = true;
                    break;
                }
                continue;
            }
        };
        if got == 0 {
            break;
        }
        let mut closing = false;
        let mut ack = false;
        for o in batch.drain(..) {
            match o {
                Out::Msg(m) => msgs.push(m),
                Out::Close => closing = true,
                Out::Ack => ack = true,
            }
        }
        if link.lane == Lane::Bulk {
            // One message per frame; a chunk's bytes go from the served
            // buffer to the socket without a copy.
            let mut broke = false;
            for m in msgs.drain(..) {
                let Some((head, tail)) = bulk_frame(m) else {
                    continue;
                };
                let len = 4 + head.len() + tail.as_ref().map_or(0, |t| t.len());
                out.put_u32(len as u32);
                out.put_u32(head.len() as u32);
                out.extend_from_slice(&head);
                if let Some(tail) = tail {
                    if wr.write_all(&out).await.is_err() || wr.write_all(&tail).await.is_err() {
                        broke = true;
                        break;
                    }
                    out.clear();
                }
            }
            if broke {
                failed = true;
                break 'write;
            }
        }
        let mut frames = Vec::new();
        let mut bounced = Vec::new();
        pack(&mut msgs, limit, &mut frames, &mut bounced);
        for (msg, why) in bounced {
            tracing::warn!("rayx: not sent to {}: {why}", link.peer.id);
            inbound.not_sent(&link, msg, why);
        }
        if frames.is_empty() && ack && session.is_some() {
            // An ack alone: a frame of no messages.
            frames.extend(wire::encode(&[]).ok().map(|b| (0, b)));
        }
        // A session numbers (and keeps) every frame before any is written:
        // a write that fails midway loses none of them.
        let frames: Vec<(Option<[u8; session::HEADER]>, bytes::Bytes)> = frames
            .into_iter()
            .map(|(count, body)| {
                let body = bytes::Bytes::from(body);
                let head = session.as_ref().map(|s| {
                    let (first, ack) = s.stamp(count as u64, &body);
                    session::header(first, ack)
                });
                (head, body)
            })
            .collect();
        for (head, body) in frames {
            out.put_u32((header + body.len()) as u32);
            if let Some(h) = head {
                out.extend_from_slice(&h);
            }
            if body.len() >= LARGE_BODY {
                if put(&mut wr, &out, &link.stop).await.is_err()
                    || put(&mut wr, &body, &link.stop).await.is_err()
                {
                    failed = true;
                    break 'write;
                }
                out.clear();
            } else {
                out.extend_from_slice(&body);
            }
        }
        if !out.is_empty() {
            if put(&mut wr, &out, &link.stop).await.is_err() {
                failed = true;
                break;
            }
            out.clear();
        }
        // TLS keeps what the socket did not take in its own buffer until a
        // flush (plain TCP's flush does nothing): a batch goes out whole.
        if flush(&mut wr, &link.stop).await.is_err() {
            failed = true;
            break;
        }
        if closing {
            break;
        }
    }
    if let Some(s) = &session {
        s.hand_back(rx);
        if failed {
            link.abort.cancel();
        }
    }
    stopped(&mut wr, &link).await;
}

/// Writes `bytes`, or stops when `stop` fires (a session's link closed
/// while its peer does not read: what it was writing is sent again).
async fn put<W: AsyncWrite + Unpin>(
    wr: &mut W,
    bytes: &[u8],
    stop: &CancellationToken,
) -> std::io::Result<()> {
    tokio::select! {
        r = wr.write_all(bytes) => r,
        _ = stop.cancelled() => Err(std::io::Error::other("the link was closed")),
    }
}

/// Flushes, or stops when `stop` fires (as [`put`]).
async fn flush<W: AsyncWrite + Unpin>(wr: &mut W, stop: &CancellationToken) -> std::io::Result<()> {
    tokio::select! {
        r = wr.flush() => r,
        _ = stop.cancelled() => Err(std::io::Error::other("the link was closed")),
    }
}

/// Waits until `at`; forever if `None`.
async fn until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// A writer's end: the link is closed, the socket shut, and waiters told.
async fn stopped<W: AsyncWrite + Unpin>(wr: &mut W, link: &Link) {
    link.closed.store(true, Ordering::Release);
    let _ = wr.shutdown().await;
    *link.written.0.lock() = true;
    link.written.1.notify_all();
}

/// What [`read_chunk_in_place`] did with the start of `buf`.
enum InPlace {
    /// A chunk's bytes landed in their pull's buffer.
    Landed,
    /// Not enough is buffered to tell what the frame is.
    NeedMore,
    /// A frame for the codec: not a chunk, or one with no place to land.
    Frame,
}

/// If `buf` starts with a chunk's frame whose bytes have a place to land,
/// reads them from the socket straight into it (what is buffered already is
/// copied, the rest read in place). `Err(None)`: the socket closed
/// mid-chunk; `Err(Some(reason))`: bad input.
async fn read_chunk_in_place<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    link: &Link,
    inbound: &dyn Inbound,
) -> Result<InPlace, Option<String>> {
    if buf.len() < 4 {
        return Ok(InPlace::NeedMore);
    }
    let frame = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
    if !(4..=wire::MAX_BULK_FRAME).contains(&frame) {
        // Not ours to judge: the frame path decides.
        return Ok(InPlace::Frame);
    }
    if buf.len() < 8 {
        return Ok(InPlace::NeedMore);
    }
    let head = u32::from_be_bytes(buf[4..8].try_into().expect("4 bytes")) as usize;
    if head + 4 > frame {
        return Ok(InPlace::Frame);
    }
    if buf.len() < 8 + head {
        return Ok(InPlace::NeedMore);
    }
    let len = frame - 4 - head;
    if len == 0 {
        return Ok(InPlace::Frame);
    }
    let (object, offset, total) = match wire::decode(&buf[8..8 + head]).as_deref() {
        Ok(
            [Msg::Chunk {
                object,
                offset,
                total,
                data: crate::value::Value::Encoded(b),
            }],
        ) if b.is_empty() => (*object, *offset, *total),
        _ => return Ok(InPlace::Frame),
    };
    let Some((mut target, at)) = inbound.chunk_target(link, object, offset, total, len) else {
        return Ok(InPlace::Frame);
    };
    let _ = buf.split_to(8 + head);
    let have = buf.len().min(len);
    target[at..at + have].copy_from_slice(&buf[..have]);
    let _ = buf.split_to(have);
    // Handed back however the read ends: also when the reader is aborted
    // mid-chunk (the buffer holds what landed before).
    let mut lent = Lent {
        inbound,
        link,
        object,
        buf: Some(target),
    };
    let target = lent.buf.as_mut().expect("lent");
    let read = rd.read_exact(&mut target[at + have..at + len]).await;
    let landed = if read.is_ok() { len } else { 0 };
    let target = lent.buf.take().expect("lent");
    inbound.chunk_landed(link, object, target, landed);
    match read {
        Ok(_) => Ok(InPlace::Landed),
        Err(_) => Err(None),
    }
}

/// A buffer lent to the bulk reader; given back with nothing landed if the
/// read stops before it is (see [`Inbound::chunk_landed`]).
struct Lent<'a> {
    inbound: &'a dyn Inbound,
    link: &'a Link,
    object: ObjectId,
    buf: Option<Vec<u8>>,
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.inbound.chunk_landed(self.link, self.object, buf, 0);
        }
    }
}

/// A bulk-lane frame body: a 4-byte length, the message (a chunk without its
/// bytes), then the chunk's bytes as they are.
pub(super) fn bulk_frame(msg: Msg) -> Option<(Vec<u8>, Option<bytes::Bytes>)> {
    let (msg, tail) = match msg {
        Msg::Chunk {
            object,
            offset,
            total,
            data: crate::value::Value::Encoded(bytes),
        } => (
            Msg::Chunk {
                object,
                offset,
                total,
                data: crate::value::Value::Encoded(bytes::Bytes::new()),
            },
            Some(bytes),
        ),
        other => (other, None),
    };
    match wire::encode(std::slice::from_ref(&msg)) {
        Ok(head) => Some((head, tail)),
        Err(e) => {
            tracing::error!("rayx: a bulk message could not be encoded: {e}");
            None
        }
    }
}

/// Reads a bulk-lane frame: its message, with a chunk's bytes a slice of the
/// frame (no copy). Public for the fuzz target.
#[doc(hidden)]
pub fn read_bulk_frame(frame: bytes::Bytes) -> Result<Vec<Msg>, String> {
    if frame.len() < 4 {
        return Err("bad bulk frame: shorter than its header".into());
    }
    let head = u32::from_be_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
    if head > frame.len() - 4 {
        return Err(format!(
            "bad bulk frame: a header of {head} bytes in a frame of {}",
            frame.len()
        ));
    }
    let mut msgs = wire::decode(&frame[4..4 + head])?;
    let tail = frame.slice(4 + head..);
    match msgs.as_mut_slice() {
        [Msg::Chunk { data, .. }] => {
            if matches!(data, crate::value::Value::Encoded(b) if !b.is_empty()) {
                return Err("bad bulk frame: a chunk with inline bytes".into());
            }
            *data = crate::value::Value::Encoded(tail);
        }
        _ if !tail.is_empty() => {
            return Err("bad bulk frame: bytes after a message that takes none".into())
        }
        _ => {}
    }
    Ok(msgs)
}

/// Packs messages into frame bodies within `limit`, halving a batch that is
/// too large or that does not encode. A single message over the limit (the
/// engine sends large values on the bulk lane, but a caller's message, an
/// error's text or a stored value may be anything) or that does not encode
/// goes to `bounced` with the reason, for its sender to answer.
fn pack(
    msgs: &mut Vec<Msg>,
    limit: usize,
    frames: &mut Vec<(usize, Vec<u8>)>,
    bounced: &mut Vec<(Msg, NotSent)>,
) {
    if msgs.is_empty() {
        return;
    }
    match wire::encode(msgs) {
        Ok(body) if body.len() <= limit => {
            frames.push((msgs.len(), body));
            msgs.clear();
        }
        _ if msgs.len() > 1 => {
            let mut tail = msgs.split_off(msgs.len() / 2);
            pack(msgs, limit, frames, bounced);
            pack(&mut tail, limit, frames, bounced);
            msgs.clear();
        }
        Ok(body) => {
            let msg = msgs.pop().expect("one message");
            let reason = format!(
                "a {} message of {} bytes is over the limit of one message between nodes ({limit} bytes)",
                kind_of(&msg),
                body.len()
            );
            bounced.push((msg, NotSent::TooLarge(reason)));
        }
        Err(e) => {
            let msg = msgs.pop().expect("one message");
            let reason = format!("a {} message could not be encoded: {e}", kind_of(&msg));
            bounced.push((msg, NotSent::Unencodable(reason)));
        }
    }
}

/// A message's kind, for logs.
pub fn kind_of(msg: &Msg) -> &'static str {
    match msg {
        Msg::Hello(_) => "Hello",
        Msg::Welcome { .. } => "Welcome",
        Msg::Challenge { .. } => "Challenge",
        Msg::Proof { .. } => "Proof",
        Msg::Refused { .. } => "Refused",
        Msg::NodeJoined(_) => "NodeJoined",
        Msg::NodeLeft { .. } => "NodeLeft",
        Msg::Heartbeat(_) => "Heartbeat",
        Msg::Stop => "Stop",
        Msg::Ask { .. } => "Ask",
        Msg::Answer { .. } => "Answer",
        Msg::RunTask { .. } => "RunTask",
        Msg::TaskDone { .. } => "TaskDone",
        Msg::Contains { .. } => "Contains",
        Msg::CreateActor(_) => "CreateActor",
        Msg::ActorCreated { .. } => "ActorCreated",
        Msg::ActorMoved { .. } => "ActorMoved",
        Msg::Call(_) => "Call",
        Msg::CallDone { .. } => "CallDone",
        Msg::KillActor { .. } => "KillActor",
        Msg::GroupState(_) => "GroupState",
        Msg::GroupReserved { .. } => "GroupReserved",
        Msg::HoldActor { .. } => "HoldActor",
        Msg::HoldAck { .. } => "HoldAck",
        Msg::ReleaseActor { .. } => "ReleaseActor",
        Msg::HoldsMoved { .. } => "HoldsMoved",
        Msg::Borrow { .. } => "Borrow",
        Msg::Fetch { .. } => "Fetch",
        Msg::Release { .. } => "Release",
        Msg::ObjectReady { .. } => "ObjectReady",
        Msg::Free { .. } => "Free",
        Msg::Pull { .. } => "Pull",
        Msg::Chunk { .. } => "Chunk",
        Msg::PullFailed { .. } => "PullFailed",
        Msg::Sync { .. } => "Sync",
        Msg::Synced { .. } => "Synced",
        Msg::NodeDraining { .. } => "NodeDraining",
        Msg::Pulled { .. } => "Pulled",
        Msg::Drain { .. } => "Drain",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Strangers that each send most of a hello and stop hold at most
    /// `HANDSHAKE_BYTES` of the node's memory together: past it those
    /// holding the most are cut off (what they read is let go), and real
    /// peers' small hellos, older or newer, go on.
    #[test]
    fn handshakes_read_no_more_than_their_budget_together() {
        let gate = Gate::new(None, Arc::default());
        let real = |gate: &Gate| {
            let (id, cancel) = gate.begin();
            gate.read(id, 200);
            (id, cancel)
        };
        let cut =
            |s: &[(u64, CancellationToken)]| s.iter().filter(|(_, c)| c.is_cancelled()).count();
        let older: Vec<_> = (0..100).map(|_| real(&gate)).collect();
        let strangers: Vec<_> = (0..40).map(|_| gate.begin()).collect();
        let each = wire::PREAUTH_FRAME - 16;
        for (id, _) in &strangers {
            gate.read(*id, each);
            let (_, bytes) = gate.under_way();
            assert!(bytes <= HANDSHAKE_BYTES, "{bytes} bytes read at once");
        }
        let newer: Vec<_> = (0..50).map(|_| real(&gate)).collect();
        assert_eq!(cut(&older), 0, "real handshakes cut");
        assert_eq!(cut(&newer), 0, "real handshakes cut");
        let fit = (HANDSHAKE_BYTES - 150 * 200) / each;
        assert_eq!(cut(&strangers), 40 - fit);
        // Among equals, the oldest went first.
        assert!(strangers[..40 - fit].iter().all(|(_, c)| c.is_cancelled()));
        assert_eq!(gate.under_way(), (150 + fit, 150 * 200 + fit * each));
        // A handshake reading on, or one ending, counts what it holds now.
        let (last, _) = strangers[39];
        gate.read(last, 100);
        let held = 150 * 200 + (fit - 1) * each + 100;
        assert_eq!(gate.under_way(), (150 + fit, held));
        for (id, _) in older.iter().chain(&strangers).chain(&newer) {
            gate.end(*id);
        }
        assert_eq!(gate.under_way(), (0, 0));
    }

    /// A message alone over the frame limit is handed back with the reason,
    /// never dropped; the messages beside it go out in order.
    #[test]
    fn a_message_over_the_limit_comes_back_and_the_rest_go() {
        let small = |object| Msg::Fetch {
            object: ObjectId {
                node: crate::ids::NodeId(1),
                seq: object,
            },
        };
        let big = Msg::Refused {
            reason: "x".repeat(10_000),
        };
        let mut msgs = vec![small(1), small(2), big, small(3)];
        let (mut frames, mut bounced) = (Vec::new(), Vec::new());
        pack(&mut msgs, 1_000, &mut frames, &mut bounced);
        assert!(msgs.is_empty());
        assert_eq!(bounced.len(), 1);
        assert!(matches!(&bounced[0].0, Msg::Refused { reason } if reason.len() == 10_000));
        let NotSent::TooLarge(why) = &bounced[0].1 else {
            panic!("{:?}", bounced[0].1);
        };
        assert!(why.contains("a Refused message of"), "{why}");
        assert!(why.contains("over the limit"), "{why}");
        let sent: Vec<Msg> = frames
            .iter()
            .flat_map(|(n, f)| {
                let msgs = wire::decode(f).expect("decodes");
                assert_eq!(msgs.len(), *n, "each frame counts its messages");
                msgs
            })
            .collect();
        let ids: Vec<u64> = sent
            .iter()
            .map(|m| match m {
                Msg::Fetch { object } => object.seq,
                other => panic!("sent {}", kind_of(other)),
            })
            .collect();
        assert_eq!(ids, vec![1, 2, 3]);
    }

    /// A message whose handling panics is dropped alone (logged, counted):
    /// the messages after it in its frame, which the session has taken as
    /// received, are handed in, and the link goes on. A panic outside any
    /// message's handling closes the link.
    #[tokio::test]
    async fn a_message_that_panics_loses_nothing_beside_it() {
        struct Panicky {
            got: mpsc::UnboundedSender<u64>,
            before_any: AtomicBool,
        }
        impl Inbound for Panicky {
            fn on_msgs(&self, _: &Arc<Link>, msgs: &mut std::vec::IntoIter<Msg>) {
                assert!(
                    !self.before_any.load(Ordering::Relaxed),
                    "a bug before any message"
                );
                for m in msgs {
                    let Msg::Fetch { object } = m else { continue };
                    assert!(object.seq != 2, "a bug message 2 trips");
                    let _ = self.got.send(object.seq);
                }
            }
            fn on_close(&self, _: &Arc<Link>, _: Option<&str>) {}
        }
        let peer = |id| NodeInfo {
            id: crate::ids::NodeId(id),
            address: "x:1".into(),
            cpus: 1.0,
            head: false,
            resources: Default::default(),
        };
        let fetch = |seq| Msg::Fetch {
            object: ObjectId {
                node: crate::ids::NodeId(1),
                seq,
            },
        };
        let (sender, _) = Link::open(
            peer(2),
            Lane::Control,
            Some(Session::new(crate::ids::NodeId(2))),
        );
        let (receiver, _) = Link::open(
            peer(1),
            Lane::Control,
            Some(Session::new(crate::ids::NodeId(1))),
        );
        // Queued before the writer starts: one frame carries all three.
        for seq in 1..=3 {
            sender.send(fetch(seq));
        }
        let (theirs, mut mine) = tokio::io::duplex(64 << 10);
        let (got_tx, mut got) = mpsc::unbounded_channel();
        let inbound = Arc::new(Panicky {
            got: got_tx,
            before_any: AtomicBool::new(false),
        });
        let rejections = Arc::new(Rejections::default());
        let writer = tokio::spawn(write_loop(theirs, None, sender.clone(), inbound.clone()));
        let reader = {
            let (inbound, receiver, rejections) =
                (inbound.clone(), receiver.clone(), rejections.clone());
            tokio::spawn(async move {
                let mut buf = BytesMut::new();
                read_frames(
                    &mut mine,
                    &mut buf,
                    &receiver,
                    inbound.as_ref(),
                    &rejections,
                )
                .await
            })
        };
        async fn next(got: &mut mpsc::UnboundedReceiver<u64>) -> Option<u64> {
            let wait = tokio::time::timeout(Duration::from_secs(10), got.recv());
            wait.await.expect("a message within 10 s")
        }
        assert_eq!(next(&mut got).await, Some(1));
        assert_eq!(next(&mut got).await, Some(3), "the message after the panic");
        sender.send(fetch(4));
        assert_eq!(next(&mut got).await, Some(4), "the link goes on");
        let counted = rejections.snapshot();
        assert_eq!(
            counted.get("a message made the node panic"),
            Some(&1),
            "{counted:?}"
        );
        assert_eq!(rejections.total(), 1);
        inbound.before_any.store(true, Ordering::Relaxed);
        sender.send(fetch(5));
        let closed = tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .expect("the reader stops")
            .expect("the reader ends");
        let reason = closed.expect("closed for a reason");
        assert!(
            reason.starts_with("a frame made the node panic"),
            "{reason}"
        );
        sender.close();
        writer.abort();
    }

    /// Past `MAX_HANDSHAKES` at once, the oldest is cut off.
    #[test]
    fn handshakes_past_the_count_cut_off_the_oldest() {
        let gate = Gate::new(None, Arc::default());
        let shakes: Vec<_> = (0..MAX_HANDSHAKES + 3).map(|_| gate.begin()).collect();
        let cut: Vec<bool> = shakes.iter().map(|(_, c)| c.is_cancelled()).collect();
        assert_eq!(cut.iter().filter(|c| **c).count(), 3);
        assert!(cut[..3].iter().all(|c| *c));
        assert_eq!(gate.under_way(), (MAX_HANDSHAKES, 0));
    }
}
