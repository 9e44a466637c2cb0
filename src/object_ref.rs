//! `ObjectRef<T>`: a future of an object, blockable and awaitable.

use crate::{Data, Result};
use rayx_actors::ids::ObjectId;
use rayx_actors::object_table::Slot;
use rayx_actors::value::Value;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// A reference to an object that is, or will be, a `T`.
///
/// Cloning it adds a reference; the object is freed when the last one is
/// dropped. It serializes as its id.
///
/// ```
/// # use rayx::prelude::*;
/// let rt = rayx::init()?;
/// let r: ObjectRef<String> = rt.put("hello".to_string())?;
/// let r2 = r.clone();
/// assert_eq!(r2.get()?, "hello");
/// assert_eq!(rt.memory().objects, 1);
/// drop((r, r2));
/// assert_eq!(rt.memory().objects, 0);
/// # Ok::<(), rayx::Error>(())
/// ```
pub struct ObjectRef<T> {
    slot: Arc<Slot>,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for ObjectRef<T> {
    fn clone(&self) -> Self {
        ObjectRef::from_slot(self.slot.clone())
    }
}

impl<T> std::fmt::Debug for ObjectRef<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ObjectRef<{}>({})",
            std::any::type_name::<T>(),
            self.slot.id()
        )
    }
}

impl<T> PartialEq for ObjectRef<T> {
    fn eq(&self, other: &Self) -> bool {
        self.slot.id() == other.slot.id()
    }
}
impl<T> Eq for ObjectRef<T> {}

impl<T> std::hash::Hash for ObjectRef<T> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.slot.id().hash(state)
    }
}

impl<T> ObjectRef<T> {
    pub(crate) fn from_slot(slot: Arc<Slot>) -> Self {
        ObjectRef {
            slot,
            _type: PhantomData,
        }
    }

    pub(crate) fn slot(&self) -> &Arc<Slot> {
        &self.slot
    }

    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.slot.id()
    }

    /// Whether the value (or its error) is there, without blocking.
    pub fn is_ready(&self) -> bool {
        // A borrowed value is asked for, so that looking again sees it come.
        self.slot.fetch();
        self.slot.is_done()
    }
}

impl<T: Data> ObjectRef<T> {
    /// Blocks until the value is there; returns a shared pointer to it (no copy).
    pub fn get_shared(&self) -> Result<Arc<T>> {
        typed(self.slot(), self.slot().wait(None)?)
    }

    pub(crate) fn get_timeout_inner(&self, timeout: Option<Duration>) -> Result<T>
    where
        T: Clone,
    {
        let value = typed::<T>(self.slot(), self.slot().wait(timeout)?)?;
        Ok(Arc::unwrap_or_clone(value))
    }

    /// Blocks until the value is there (Ray's `get`). A failed task's error is
    /// returned as the error.
    pub fn get(&self) -> Result<T>
    where
        T: Clone,
    {
        self.get_timeout_inner(None)
    }

    /// Like [`get`](Self::get), failing with `GetTimeout` once `timeout` passes.
    /// A zero timeout only looks.
    ///
    /// ```
    /// # use rayx::prelude::*;
    /// fn slow(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// rayx::remote!(slow);
    /// let rt = rayx::init()?;
    /// let r = rt.task(slow).remote(2_000);
    /// assert!(matches!(r.get_timeout(Duration::ZERO), Err(Error::GetTimeout { .. })));
    /// # Ok::<(), rayx::Error>(())
    /// ```
    pub fn get_timeout(&self, timeout: Duration) -> Result<T>
    where
        T: Clone,
    {
        self.get_timeout_inner(Some(timeout))
    }
}

/// The value as a `T`. Bytes from another node are decoded as its node's
/// runtime (a thread of any kind may read them), so the refs and handles in
/// them resolve.
fn typed<T: Data>(slot: &Slot, value: Value) -> Result<Arc<T>> {
    if matches!(value, Value::Encoded(_)) {
        if let Some(node) = rayx_actors::node::by_id(slot.table().node()) {
            return rayx_actors::node::with_node(&node, || value.into_typed::<T>());
        }
    }
    value.into_typed::<T>()
}

/// The future of `ref.await`.
pub struct GetFuture<T> {
    object: ObjectRef<T>,
    token: Option<u64>,
}

impl<T: Data + Clone> Future for GetFuture<T> {
    type Output = Result<T>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let this = self.get_mut();
        match this.object.slot().poll(cx, &mut this.token) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(r) => {
                this.token = None;
                let slot = this.object.slot();
                Poll::Ready(
                    r.and_then(|v| typed::<T>(slot, v))
                        .map(Arc::unwrap_or_clone),
                )
            }
        }
    }
}

impl<T> Drop for GetFuture<T> {
    fn drop(&mut self) {
        if let Some(t) = self.token.take() {
            self.object.slot().deregister(t);
        }
    }
}

impl<T: Data + Clone> IntoFuture for ObjectRef<T> {
    type Output = Result<T>;
    type IntoFuture = GetFuture<T>;
    fn into_future(self) -> GetFuture<T> {
        GetFuture {
            object: self,
            token: None,
        }
    }
}

impl<T: Data + Clone> IntoFuture for &ObjectRef<T> {
    type Output = Result<T>;
    type IntoFuture = GetFuture<T>;
    fn into_future(self) -> GetFuture<T> {
        GetFuture {
            object: self.clone(),
            token: None,
        }
    }
}

impl<T> Serialize for ObjectRef<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        // On its way to another node, the sender keeps it until the receiver
        // holds its own.
        rayx_actors::value::pin_while_sending(self.slot.clone());
        self.slot.id().serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for ObjectRef<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let id = ObjectId::deserialize(d)?;
        let node = rayx_actors::node::current_node().ok_or_else(|| {
            serde::de::Error::custom(
                "an ObjectRef can be decoded only in a rayx worker or with Runtime::decode",
            )
        })?;
        let slot = node.resolve(id).map_err(crate::handle::decode_error)?;
        Ok(ObjectRef::from_slot(slot))
    }
}

/// A list of refs to wait on: borrowed (`&refs`, cloned) or owned (`refs`, moved).
pub trait RefList<T> {
    /// The refs, as a vector this call owns.
    fn into_refs(self) -> Vec<ObjectRef<T>>;
}

impl<T> RefList<T> for Vec<ObjectRef<T>> {
    fn into_refs(self) -> Vec<ObjectRef<T>> {
        self
    }
}

impl<T> RefList<T> for &Vec<ObjectRef<T>> {
    fn into_refs(self) -> Vec<ObjectRef<T>> {
        self.clone()
    }
}

impl<T> RefList<T> for &[ObjectRef<T>] {
    fn into_refs(self) -> Vec<ObjectRef<T>> {
        self.to_vec()
    }
}

impl<T, const N: usize> RefList<T> for [ObjectRef<T>; N] {
    fn into_refs(self) -> Vec<ObjectRef<T>> {
        self.into()
    }
}

impl<T, const N: usize> RefList<T> for &[ObjectRef<T>; N] {
    fn into_refs(self) -> Vec<ObjectRef<T>> {
        self.to_vec()
    }
}
