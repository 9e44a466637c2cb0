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
    /// A byte buffer (a `bytes::Bytes` or a `serde_bytes::ByteBuf`) from
    /// another process: its bytes without their msgpack header, where they
    /// landed, so that reading it as a `Bytes` shares them (as a `ByteBuf`,
    /// a copy unless it is small and nobody else holds it).
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

/// The msgpack header of a bin of `len` bytes (at most `u32::MAX`: a value
/// that leaves the process is checked first).
pub fn bin_header(len: usize) -> Vec<u8> {
    let mut h = Vec::with_capacity(5);
    // rmp's own writer: the shortest header for the length.
    let _ = rmp::encode::write_bin_len(&mut h, len as u32);
    h
}

/// Whether `T` is `U`.
fn is<T: 'static, U: 'static>() -> bool {
    TypeId::of::<T>() == TypeId::of::<U>()
}

/// `value` as a `T`, when `T` is `U` (the caller has checked with [`is`]).
fn same<T: 'static, U: 'static>(value: U) -> Result<Arc<T>, Error> {
    let any: Box<dyn Any> = Box::new(value);
    any.downcast::<T>()
        .map(|b| Arc::new(*b))
        .map_err(|_| Error::Serialization("a byte buffer of another type".into()))
}

/// The bytes of a local byte buffer — a `bytes::Bytes` or a
/// `serde_bytes::ByteBuf`, what encodes as one msgpack bin.
fn bin_of(any: &dyn Any) -> Option<&[u8]> {
    if let Some(b) = any.downcast_ref::<bytes::Bytes>() {
        return Some(b);
    }
    any.downcast_ref::<serde_bytes::ByteBuf>()
        .map(|b| b.as_slice())
}

/// The length of a msgpack bin header at the start of `data`, if the bin
/// fills exactly `total` bytes (the whole of an encoding that starts there).
pub fn bin_header_len(data: &[u8], total: u64) -> Option<usize> {
    let (h, len) = match *data.first()? {
        0xc4 => (2, *data.get(1)? as u64),
        0xc5 => (
            3,
            u16::from_be_bytes(data.get(1..3)?.try_into().ok()?) as u64,
        ),
        0xc6 => (
            5,
            u32::from_be_bytes(data.get(1..5)?.try_into().ok()?) as u64,
        ),
        _ => return None,
    };
    (h as u64 + len == total).then_some(h)
}

/// Shares a local byte buffer's bytes as `Bytes` without a copy.
struct SharedBin(Arc<dyn Object>);

impl AsRef<[u8]> for SharedBin {
    fn as_ref(&self) -> &[u8] {
        bin_of(self.0.as_any()).unwrap_or(&[])
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
                if is::<T, bytes::Bytes>() {
                    return same(bytes);
                }
                if is::<T, serde_bytes::ByteBuf>() {
                    // The buffer itself, taken over when nobody shares it and
                    // it is a plain `Vec` (a small one); else a copy, a large
                    // one into huge pages over the process's cores. (A pulled
                    // buffer of 1 MiB or more belongs to its node's pool:
                    // `bytes` reports it shared, and it is copied.)
                    let vec = if bytes.is_unique() {
                        Vec::<u8>::from(bytes)
                    } else {
                        crate::pages::copied(&bytes)
                    };
                    return same(serde_bytes::ByteBuf::from(vec));
                }
                let mut encoded = bin_header(bytes.len());
                encoded.extend_from_slice(&bytes);
                Value::Encoded(bytes::Bytes::from(encoded)).into_typed()
            }
            Value::Encoded(bytes) if is::<T, bytes::Bytes>() => {
                match bin_header_len(&bytes, bytes.len() as u64) {
                    Some(h) => same(bytes.slice(h..)),
                    None => Value::decode(&bytes),
                }
            }
            Value::Encoded(bytes) => Value::decode(&bytes),
            Value::Taken => Err(Error::Serialization("the value was already taken".into())),
        }
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<Arc<T>, Error> {
        rmp_serde::from_slice(bytes).map(Arc::new).map_err(|e| {
            Error::Serialization(format!(
                "cannot decode a `{}`: {e}",
                std::any::type_name::<T>()
            ))
        })
    }

    /// The value's bytes, encoding it if it is local.
    pub fn to_bytes(&self) -> Result<bytes::Bytes, Error> {
        self.fits_msgpack()?;
        match self {
            Value::Local { object, size } => {
                // Sized up front: a large value is written once, never regrown.
                let mut out = crate::pages::with_capacity(size.saturating_add(16));
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

    /// Whether [`to_parts`](Self::to_parts) shares bytes that are there
    /// already (a byte buffer, or an encoding) rather than encoding a value.
    pub fn parts_are_shared(&self) -> bool {
        match self {
            Value::Local { object, .. } => bin_of(object.as_any()).is_some(),
            _ => true,
        }
    }

    /// Refuses a byte buffer or string longer than msgpack's one-value limit
    /// (`u32::MAX` bytes): its encoder would write the length cut short, and
    /// the receiver would read a value cut short.
    fn fits_msgpack(&self) -> Result<(), Error> {
        // The measured size of a byte buffer or string is its length: only
        // a value over the limit is looked at.
        if self.size() <= u32::MAX as usize {
            return Ok(());
        }
        let len = match self {
            Value::Local { object, .. } => {
                let any = object.as_any();
                bin_of(any)
                    .map(<[u8]>::len)
                    .or_else(|| any.downcast_ref::<String>().map(String::len))
                    .or_else(|| any.downcast_ref::<Vec<u8>>().map(Vec::len))
                    .unwrap_or(0)
            }
            Value::Bin(b) => b.len(),
            Value::Encoded(_) | Value::Taken => 0,
        };
        if len > u32::MAX as usize {
            return Err(Error::Serialization(format!(
                "a {} of {len} bytes cannot leave the process: msgpack holds at most {} bytes in one value",
                self.type_name(),
                u32::MAX
            )));
        }
        Ok(())
    }

    fn type_name(&self) -> &'static str {
        match self {
            Value::Local { object, .. } => object.type_name(),
            _ => "byte buffer",
        }
    }

    /// The value's encoding as a header and a body, sharing a byte buffer's
    /// bytes rather than copying them (what a transfer sends from).
    pub fn to_parts(&self) -> Result<(bytes::Bytes, bytes::Bytes), Error> {
        self.fits_msgpack()?;
        match self {
            Value::Local { object, .. } if bin_of(object.as_any()).is_some() => {
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
    if let Some(b) = bin_of(any) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use serde_bytes::ByteBuf;

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7) as u8).collect()
    }

    #[test]
    fn a_local_bytes_is_measured_by_its_length_and_sent_from_where_it_lies() {
        let data = Bytes::from(pattern(70_000));
        let value = Value::new(data.clone());
        assert_eq!(value.size(), 70_000);
        assert!(value.parts_are_shared());
        let (head, body) = value.to_parts().unwrap();
        assert_eq!(
            body.as_ptr(),
            data.as_ptr(),
            "the body is the buffer itself"
        );
        assert_eq!(head.as_ref(), bin_header(70_000).as_slice());
        // Its encoding is a msgpack bin, as a ByteBuf's is.
        let encoded = value.to_bytes().unwrap();
        assert_eq!(
            encoded,
            rmp_serde::to_vec(&ByteBuf::from(pattern(70_000))).unwrap()
        );
        assert!(!Value::new(pattern(10)).parts_are_shared());
    }

    #[test]
    fn bytes_from_another_process_are_read_without_a_copy() {
        // As a pulled byte buffer lands: its bytes without the header.
        let landed = Bytes::from(pattern(300_000));
        let read = Value::Bin(landed.clone()).into_typed::<Bytes>().unwrap();
        assert_eq!(read.as_ptr(), landed.as_ptr());
        // As an inline value arrives: a whole encoding, read past its header.
        let encoded = Bytes::from(rmp_serde::to_vec(&ByteBuf::from(pattern(1000))).unwrap());
        let read = Value::Encoded(encoded.clone())
            .into_typed::<Bytes>()
            .unwrap();
        assert_eq!(read.as_ref(), pattern(1000).as_slice());
        assert_eq!(read.as_ptr(), encoded[bin_header(1000).len()..].as_ptr());
        // Empty.
        let empty = Value::new(Bytes::new()).to_bytes().unwrap();
        let read = Value::Encoded(empty).into_typed::<Bytes>().unwrap();
        assert!(read.is_empty());
    }

    #[test]
    fn bytes_and_byte_bufs_read_as_each_other_across_processes() {
        let sent = Value::new(Bytes::from(pattern(5000))).to_bytes().unwrap();
        let as_buf = Value::Encoded(sent).into_typed::<ByteBuf>().unwrap();
        assert_eq!(as_buf.as_slice(), pattern(5000).as_slice());
        let sent = Value::new(ByteBuf::from(pattern(5000))).to_bytes().unwrap();
        let as_bytes = Value::Encoded(sent).into_typed::<Bytes>().unwrap();
        assert_eq!(as_bytes.as_ref(), pattern(5000).as_slice());
        let as_buf = Value::Bin(Bytes::from(pattern(77))).into_typed::<ByteBuf>();
        assert_eq!(as_buf.unwrap().as_slice(), pattern(77).as_slice());
    }

    #[test]
    fn a_byte_buffer_over_msgpack_s_limit_is_refused_not_cut_short() {
        // Zeroed pages the allocator maps lazily: 4 GiB of address space, no
        // memory touched.
        let len = u32::MAX as usize + 11;
        let huge = Value::new(Bytes::from(vec![0u8; len]));
        for err in [huge.to_parts().unwrap_err(), huge.to_bytes().unwrap_err()] {
            match err {
                Error::Serialization(why) => assert!(why.contains("at most 4294967295"), "{why}"),
                other => panic!("a typed refusal: {other:?}"),
            }
        }
        let edge = Value::new(ByteBuf::from(vec![0u8; u32::MAX as usize]));
        let (head, body) = edge.to_parts().unwrap();
        assert_eq!(
            (head.as_ref(), body.len()),
            (&[0xc6, 0xff, 0xff, 0xff, 0xff][..], u32::MAX as usize)
        );
    }

    #[test]
    fn bytes_that_are_not_a_byte_buffer_fail_to_read_as_bytes_with_a_typed_error() {
        // A number's encoding is no bin: decoded by serde, which refuses it.
        let number = Value::new(42u64).to_bytes().unwrap();
        let err = Value::Encoded(number).into_typed::<Bytes>().unwrap_err();
        assert!(matches!(err, Error::Serialization(_)), "{err:?}");
        // A bin header that claims more than is there.
        let mut short = bin_header(100);
        short.extend_from_slice(&[1, 2, 3]);
        let err = Value::Encoded(Bytes::from(short))
            .into_typed::<Bytes>()
            .unwrap_err();
        assert!(matches!(err, Error::Serialization(_)), "{err:?}");
        // In one process a value keeps its type.
        let err = Value::new(ByteBuf::from(vec![1]))
            .into_typed::<Bytes>()
            .unwrap_err();
        assert!(matches!(err, Error::TypeMismatch { .. }), "{err:?}");
    }
}
