//! Values as the engine carries them: a shared pointer inside the process, bytes
//! outside it. An 800 MB `put` costs a pointer; encoding happens only at the edge.

use crate::error::Error;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::any::{Any, TypeId};
use std::fmt;
use std::sync::Arc;

/// A value the engine can hold: any `Serialize + Send + Sync` type.
pub trait Object: Any + Send + Sync {
    /// Encodes the value with rmp-serde, for a trip out of the process.
    fn encode(&self) -> Result<Vec<u8>, Error>;
    /// Encodes the value with rmp-serde onto the end of `out`.
    fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), Error>;
    /// The Rust type's name, for type-mismatch errors.
    fn type_name(&self) -> &'static str;
    /// The value as `Any`, to downcast.
    fn as_any(&self) -> &dyn Any;
    /// The shared value as `Any`, to downcast without a copy.
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

impl<T: Serialize + Send + Sync + 'static> Object for T {
    fn encode(&self) -> Result<Vec<u8>, Error> {
        rmp_serde::to_vec(self).map_err(|e| Error::Serialization(e.to_string()))
    }
    fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        rmp_serde::encode::write(out, self).map_err(|e| Error::Serialization(e.to_string()))
    }
    fn type_name(&self) -> &'static str {
        std::any::type_name::<T>()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
}

/// A value in flight or at rest: shared in-process, or encoded bytes from a peer.
#[derive(Clone)]
pub enum Value {
    /// A value of this process, shared without a copy.
    Local {
        /// The value.
        object: Arc<dyn Object>,
        /// Its size in bytes, as it would be encoded.
        size: usize,
    },
    /// Encoded bytes (rmp-serde), as they arrive from another process.
    Encoded(bytes::Bytes),
    /// A byte buffer (`serde_bytes::ByteBuf`) from another process: its
    /// bytes without their msgpack header, so reading it as a `ByteBuf`
    /// takes the buffer over without a copy.
    Bin(bytes::Bytes),
    /// Nothing: the value was taken out to be consumed.
    Taken,
}

/// What a sender keeps alive while a value it encoded is on its way: the refs
/// and handles inside it, until the receiver holds its own.
pub type Pin = Arc<dyn Any + Send + Sync>;

thread_local! {
    static SENDING: std::cell::RefCell<Option<Vec<Pin>>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` (an encoding for another node), collecting the pins of the refs
/// and handles it encodes ([`pin_while_sending`]).
pub fn collect_pins<R>(f: impl FnOnce() -> R) -> (R, Vec<Pin>) {
    let outer = SENDING.with(|s| s.borrow_mut().replace(Vec::new()));
    let r = f();
    let pins = SENDING.with(|s| std::mem::replace(&mut *s.borrow_mut(), outer));
    (r, pins.unwrap_or_default())
}

/// Called by a ref or handle as it is encoded: while [`collect_pins`] runs,
/// `pin` is kept alive by the sender.
pub fn pin_while_sending(pin: Pin) {
    SENDING.with(|s| {
        if let Some(pins) = s.borrow_mut().as_mut() {
            pins.push(pin);
        }
    });
}

/// The msgpack header of a bin of `len` bytes.
pub fn bin_header(len: usize) -> Vec<u8> {
    let mut h = Vec::with_capacity(5);
    // rmp's own writer: the shortest header for the length.
    let _ = rmp::encode::write_bin_len(&mut h, len as u32);
    h
}

/// Shares a local `ByteBuf`'s bytes as `Bytes` without a copy.
struct SharedBin(Arc<dyn Object>);

impl AsRef<[u8]> for SharedBin {
    fn as_ref(&self) -> &[u8] {
        self.0
            .as_any()
            .downcast_ref::<serde_bytes::ByteBuf>()
            .map_or(&[], |b| b.as_slice())
    }
}

impl Value {
    /// Wraps a value; its size is measured once, here.
    pub fn new<T: Serialize + Send + Sync + 'static>(value: T) -> Value {
        let size = encoded_size(&value);
        Value::Local {
            object: Arc::new(value),
            size,
        }
    }

    /// The value's size in bytes (its encoded size).
    pub fn size(&self) -> usize {
        match self {
            Value::Local { size, .. } => *size,
            Value::Encoded(b) => b.len(),
            Value::Bin(b) => b.len() + bin_header(b.len()).len(),
            Value::Taken => 0,
        }
    }

    /// The value as a `T`, shared when local, decoded when encoded.
    pub fn downcast<T: DeserializeOwned + Send + Sync + 'static>(&self) -> Result<Arc<T>, Error> {
        self.clone().into_typed()
    }

    /// Like [`downcast`](Self::downcast), consuming the value: a value nobody
    /// else shares comes back as the only reference, so it can be unwrapped.
    pub fn into_typed<T: DeserializeOwned + Send + Sync + 'static>(self) -> Result<Arc<T>, Error> {
        match self {
            Value::Local { object, .. } => {
                let found = object.type_name();
                object
                    .into_any()
                    .downcast::<T>()
                    .map_err(|_| Error::TypeMismatch {
                        expected: std::any::type_name::<T>().to_string(),
                        found: found.to_string(),
                    })
            }
            Value::Bin(bytes) => {
                if TypeId::of::<T>() == TypeId::of::<serde_bytes::ByteBuf>() {
                    // The buffer itself, taken over when nobody shares it.
                    let buf: Box<dyn Any> =
                        Box::new(serde_bytes::ByteBuf::from(Vec::<u8>::from(bytes)));
                    return buf.downcast::<T>().map(|b| Arc::new(*b)).map_err(|_| {
                        Error::Serialization("a byte buffer is not a ByteBuf".into())
                    });
                }
                let mut encoded = bin_header(bytes.len());
                encoded.extend_from_slice(&bytes);
                Value::Encoded(bytes::Bytes::from(encoded)).into_typed()
            }
            Value::Encoded(bytes) => rmp_serde::from_slice(&bytes).map(Arc::new).map_err(|e| {
                Error::Serialization(format!(
                    "cannot decode a `{}`: {e}",
                    std::any::type_name::<T>()
                ))
            }),
            Value::Taken => Err(Error::Serialization("the value was already taken".into())),
        }
    }

    /// The value's bytes, encoding it if it is local.
    pub fn to_bytes(&self) -> Result<bytes::Bytes, Error> {
        match self {
            Value::Local { object, size } => {
                // Sized up front: a large value is written once, never regrown.
                let mut out = Vec::with_capacity(size.saturating_add(16));
                object.encode_into(&mut out)?;
                Ok(bytes::Bytes::from(out))
            }
            Value::Encoded(b) => Ok(b.clone()),
            Value::Bin(b) => {
                let mut out = bin_header(b.len());
                out.extend_from_slice(b);
                Ok(bytes::Bytes::from(out))
            }
            Value::Taken => Ok(bytes::Bytes::new()),
        }
    }

    /// The value's encoding as a header and a body, sharing a byte buffer's
    /// bytes rather than copying them (what a transfer sends from).
    pub fn to_parts(&self) -> Result<(bytes::Bytes, bytes::Bytes), Error> {
        match self {
            Value::Local { object, .. } if object.as_any().is::<serde_bytes::ByteBuf>() => {
                let body = bytes::Bytes::from_owner(SharedBin(object.clone()));
                Ok((bytes::Bytes::from(bin_header(body.len())), body))
            }
            Value::Bin(b) => Ok((bytes::Bytes::from(bin_header(b.len())), b.clone())),
            other => Ok((other.to_bytes()?, bytes::Bytes::new())),
        }
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Local { object, size } => {
                write!(f, "Value::Local({}, {size} bytes)", object.type_name())
            }
            Value::Encoded(b) => write!(f, "Value::Encoded({} bytes)", b.len()),
            Value::Bin(b) => write!(f, "Value::Bin({} bytes)", b.len()),
            Value::Taken => write!(f, "Value::Taken"),
        }
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let bytes = self.to_bytes().map_err(serde::ser::Error::custom)?;
        s.serialize_bytes(&bytes)
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        let buf = serde_bytes::ByteBuf::deserialize(d)?;
        Ok(Value::Encoded(bytes::Bytes::from(buf.into_vec())))
    }
}

/// The encoded size of a value. Flat vectors and strings are measured from their
/// length (no pass over the data); anything else by encoding it into a counter.
pub fn encoded_size<T: Serialize + 'static>(value: &T) -> usize {
    let any = value as &dyn Any;
    macro_rules! flat {
        ($($t:ty),*) => {$(
            if TypeId::of::<T>() == TypeId::of::<Vec<$t>>() {
                if let Some(v) = any.downcast_ref::<Vec<$t>>() {
                    return v.len() * std::mem::size_of::<$t>();
                }
            }
        )*};
    }
    flat!(u8, i8, u16, i16, u32, i32, u64, i64, f32, f64);
    if let Some(s) = any.downcast_ref::<String>() {
        return s.len();
    }
    if let Some(b) = any.downcast_ref::<serde_bytes::ByteBuf>() {
        return b.len();
    }
    let mut counter = Counter(0);
    match rmp_serde::encode::write(&mut counter, value) {
        Ok(()) => counter.0,
        Err(_) => std::mem::size_of::<T>(),
    }
}

struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
