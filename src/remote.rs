//! Remote functions: registered under a stable name (their full Rust path), so
//! the same call can run on any node that runs the same binary.

use crate::handle::Runtime;
use crate::object_ref::ObjectRef;
use crate::{Data, Error, Result};
use rayx_actors::functions::{FunctionTable, Invoke};
use rayx_actors::ids::NodeId;
use rayx_actors::messages::{Arg, Retries, RetryExceptions, Scheduling, SpecOptions, TaskSpec};
use rayx_actors::object_table::Slot;
use rayx_actors::value::Value;
use std::borrow::Cow;
use std::marker::PhantomData;
use std::sync::Arc;

/// Registers functions as remote functions, callable with [`Runtime::task`].
///
/// The name is the function's full path (`my_crate::module::square`), so two
/// `square`s in different modules do not collide.
///
/// ```
/// # use rayx::prelude::*;
/// mod a { pub fn f(x: i64) -> i64 { x + 1 } }
/// mod b { pub fn f(x: i64) -> i64 { x + 2 } }
/// rayx::remote!(a::f, b::f);
/// let rt = rayx::init()?;
/// assert_eq!(rt.task(a::f).remote(0).get()?, 1);
/// assert_eq!(rt.task(b::f).remote(0).get()?, 2);
/// # Ok::<(), rayx::Error>(())
/// ```
///
/// A function that returns `Result<T, E>` with `E: Display` fails its task on
/// `Err` (Ray: a task that raises), with `TaskFailed` carrying the error's text;
/// it is retried only with `retry_exceptions`. Its `ObjectRef` holds the
/// `Result`, which is always `Ok` when read.
///
/// ```
/// # use rayx::prelude::*;
/// fn parse(s: String) -> Result<i64, String> { s.parse().map_err(|e| format!("{e}")) }
/// rayx::remote!(parse);
/// let rt = rayx::init()?;
/// assert_eq!(rt.task(parse).remote("42".to_string()).get()?, Ok(42));
/// match rt.task(parse).remote("x".to_string()).get() {
///     Err(Error::TaskFailed { cause, .. }) => assert!(cause.contains("invalid digit")),
///     other => panic!("{other:?}"),
/// }
/// # Ok::<(), rayx::Error>(())
/// ```
#[macro_export]
macro_rules! remote {
    ($($f:path),+ $(,)?) => {$(
        $crate::__private::inventory::submit! {
            $crate::__private::Registration::new(
                || $crate::__private::name_of(&$f),
                concat!(file!(), ":", line!()),
                |args| {
                    #[allow(unused_imports)]
                    use $crate::__private::{ReturnsErr as _, ReturnsValue as _};
                    let out = $crate::__private::invoke(&$f, args)?;
                    // Chosen by the concrete return type: an `Err` of a
                    // `Result<T, E: Display>` fails the task, anything else is
                    // its value.
                    Ok((&&$crate::__private::Output(std::cell::Cell::new(Some(out)))).outcome())
                },
            )
        }
    )+};
}

/// A task's raw return value, to be turned into its outcome.
#[doc(hidden)]
pub struct Output<R>(pub std::cell::Cell<Option<R>>);

impl<R> Output<R> {
    fn take(&self) -> R {
        // Filled by `remote!` and read once.
        self.0.take().expect("rayx: a task's output is read once")
    }
}

/// The outcome of a function that returns `Result<T, E>`: `Err` is a failure.
#[doc(hidden)]
pub trait ReturnsErr {
    fn outcome(&self) -> std::result::Result<Value, String>;
}

impl<T: Data, E: Data + std::fmt::Display> ReturnsErr for &Output<std::result::Result<T, E>> {
    fn outcome(&self) -> std::result::Result<Value, String> {
        let out = self.take();
        if let Err(e) = &out {
            return Err(e.to_string());
        }
        Ok(Value::new(out))
    }
}

/// The outcome of any other function: its value.
#[doc(hidden)]
pub trait ReturnsValue {
    fn outcome(&self) -> std::result::Result<Value, String>;
}

impl<R: Data> ReturnsValue for Output<R> {
    fn outcome(&self) -> std::result::Result<Value, String> {
        Ok(Value::new(self.take()))
    }
}

/// One remote function, as `remote!` submits it.
#[doc(hidden)]
pub struct Registration {
    name: fn() -> &'static str,
    site: &'static str,
    invoke: Invoke,
}

impl Registration {
    #[doc(hidden)]
    pub const fn new(name: fn() -> &'static str, site: &'static str, invoke: Invoke) -> Self {
        Registration { name, site, invoke }
    }
}

inventory::collect!(Registration);

/// Every function registered in this binary; a name registered twice is
/// refused, naming both places.
pub(crate) fn function_table() -> Result<FunctionTable> {
    let mut table = FunctionTable::new();
    for r in inventory::iter::<Registration> {
        table.insert((r.name)(), r.site, r.invoke)?;
    }
    Ok(table)
}

/// The stable name of a function item: its full path.
#[doc(hidden)]
pub fn name_of<F>(_: &F) -> &'static str {
    std::any::type_name::<F>()
}

/// Runs `f` on engine values (what a worker calls), returning what it returned.
#[doc(hidden)]
pub fn invoke<F: RemoteFunction<Args, R>, Args, R>(f: &F, args: Vec<Value>) -> Result<R> {
    f.call(args)
}

/// A function that can run as a task: `Fn(A, B, …) -> R` with up to 8 arguments.
pub trait RemoteFunction<Args, R>: Send + Sync + 'static {
    /// How many arguments it takes.
    const ARITY: usize;
    /// Calls it on engine values.
    fn call(&self, args: Vec<Value>) -> Result<R>;
}

fn take_arg<A: Data + Clone>(value: Value) -> Result<A> {
    value.into_typed::<A>().map(Arc::unwrap_or_clone)
}

macro_rules! remote_fn {
    ($n:expr; $($a:ident),*) => {
        impl<Func, R, $($a),*> RemoteFunction<($($a,)*), R> for Func
        where
            Func: Fn($($a),*) -> R + Send + Sync + 'static,
            R: Data,
            $($a: Data + Clone,)*
        {
            const ARITY: usize = $n;
            #[allow(non_snake_case, unused_mut, unused_variables)]
            fn call(&self, args: Vec<Value>) -> Result<R> {
                if args.len() != $n {
                    return Err(Error::ArityMismatch {
                        function: std::any::type_name::<Func>().to_string(),
                        expected: $n,
                        given: args.len(),
                    });
                }
                let mut args = args.into_iter();
                $(let $a = take_arg::<$a>(args.next().ok_or(Error::ShutDown)?)?;)*
                Ok(self($($a),*))
            }
        }
    };
}
remote_fn!(0;);
remote_fn!(1; A0);
remote_fn!(2; A0, A1);
remote_fn!(3; A0, A1, A2);
remote_fn!(4; A0, A1, A2, A3);
remote_fn!(5; A0, A1, A2, A3, A4);
remote_fn!(6; A0, A1, A2, A3, A4, A5);
remote_fn!(7; A0, A1, A2, A3, A4, A5, A6);
remote_fn!(8; A0, A1, A2, A3, A4, A5, A6, A7);

/// Something that can be passed as an argument of type `A`: an `A`, or an
/// `ObjectRef<A>` (resolved to its value before the task runs, as in Ray).
pub trait IntoArg<A> {
    /// The engine argument; a ref's slot is pinned until the task has run.
    fn into_arg(self, pins: &mut Vec<Arc<Slot>>) -> Arg;
}

impl<A: Data> IntoArg<A> for A {
    fn into_arg(self, _: &mut Vec<Arc<Slot>>) -> Arg {
        Arg::Value(Value::new(self))
    }
}

impl<A: Data> IntoArg<A> for ObjectRef<A> {
    fn into_arg(self, pins: &mut Vec<Arc<Slot>>) -> Arg {
        let id = self.id();
        pins.push(self.slot().clone());
        Arg::Ref(id)
    }
}

impl<A: Data> IntoArg<A> for &ObjectRef<A> {
    fn into_arg(self, pins: &mut Vec<Arc<Slot>>) -> Arg {
        <ObjectRef<A> as IntoArg<A>>::into_arg(self.clone(), pins)
    }
}

/// The arguments of a call: `()`, one argument, or a tuple of them.
pub trait IntoArgs<Args> {
    /// The engine arguments, in order.
    fn into_args(self, pins: &mut Vec<Arc<Slot>>) -> Vec<Arg>;
}

impl IntoArgs<()> for () {
    fn into_args(self, _: &mut Vec<Arc<Slot>>) -> Vec<Arg> {
        Vec::new()
    }
}

impl<A0, X0: IntoArg<A0>> IntoArgs<(A0,)> for X0 {
    fn into_args(self, pins: &mut Vec<Arc<Slot>>) -> Vec<Arg> {
        vec![self.into_arg(pins)]
    }
}

macro_rules! into_args {
    ($(($a:ident, $x:ident, $i:tt)),*) => {
        impl<$($a, $x: IntoArg<$a>),*> IntoArgs<($($a,)*)> for ($($x,)*) {
            fn into_args(self, pins: &mut Vec<Arc<Slot>>) -> Vec<Arg> {
                vec![$(self.$i.into_arg(pins)),*]
            }
        }
    };
}
into_args!((A0, X0, 0), (A1, X1, 1));
into_args!((A0, X0, 0), (A1, X1, 1), (A2, X2, 2));
into_args!((A0, X0, 0), (A1, X1, 1), (A2, X2, 2), (A3, X3, 3));
into_args!(
    (A0, X0, 0),
    (A1, X1, 1),
    (A2, X2, 2),
    (A3, X3, 3),
    (A4, X4, 4)
);
into_args!(
    (A0, X0, 0),
    (A1, X1, 1),
    (A2, X2, 2),
    (A3, X3, 3),
    (A4, X4, 4),
    (A5, X5, 5)
);
into_args!(
    (A0, X0, 0),
    (A1, X1, 1),
    (A2, X2, 2),
    (A3, X3, 3),
    (A4, X4, 4),
    (A5, X5, 5),
    (A6, X6, 6)
);
into_args!(
    (A0, X0, 0),
    (A1, X1, 1),
    (A2, X2, 2),
    (A3, X3, 3),
    (A4, X4, 4),
    (A5, X5, 5),
    (A6, X6, 6),
    (A7, X7, 7)
);

/// A remote function ready to be called, with its options.
///
/// ```
/// # use rayx::prelude::*;
/// fn add(a: i64, b: i64) -> i64 { a + b }
/// rayx::remote!(add);
/// let rt = rayx::init()?;
/// let x = rt.put(40)?;
/// let sum = rt.task(add).name("answer").remote((&x, 2));
/// assert_eq!(sum.get()?, 42);
/// # Ok::<(), rayx::Error>(())
/// ```
pub struct TaskBuilder<'r, F, Args, R> {
    rt: &'r Runtime,
    name: &'static str,
    /// Nothing until an option is set (the defaults: most tasks), so a
    /// submit copies a pointer, not the options.
    options: SpecOptions,
    _f: PhantomData<fn(F, Args) -> R>,
}

impl<'r, F: RemoteFunction<Args, R>, Args, R> TaskBuilder<'r, F, Args, R> {
    pub(crate) fn new(rt: &'r Runtime, _: F) -> Self {
        TaskBuilder {
            rt,
            name: std::any::type_name::<F>(),
            options: SpecOptions::default(),
            _f: PhantomData,
        }
    }

    /// Names the task, for errors and debugging.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.options.name = Some(name.into());
        self
    }

    /// Retries after system failures (its worker died): Ray's default is 3;
    /// `Retries::Infinite` for no limit (Ray's -1). With `retry_exceptions`,
    /// panics count too. A task that may be retried keeps its lineage, so its
    /// result can be rebuilt if lost.
    pub fn max_retries(mut self, n: impl Into<Retries>) -> Self {
        self.options.max_retries = n.into();
        self
    }

    /// Retries the task when it panics, too (Ray's `retry_exceptions=True`),
    /// within `max_retries`.
    pub fn retry_exceptions(mut self, on: bool) -> Self {
        self.options.retry_exceptions = if on {
            RetryExceptions::All
        } else {
            RetryExceptions::None
        };
        self
    }

    /// Retries the task when it panics with a message containing one of
    /// `needles` (Ray's list of exception types), within `max_retries`.
    pub fn retry_exceptions_matching<S: Into<String>>(
        mut self,
        needles: impl IntoIterator<Item = S>,
    ) -> Self {
        self.options.retry_exceptions =
            RetryExceptions::Matching(needles.into_iter().map(Into::into).collect());
        self
    }

    /// Where in a cluster it may run (Ray's scheduling strategy): the
    /// default is Ray's hybrid policy (here until this node is half busy,
    /// then the least-loaded node); `Scheduling::Spread` takes turns.
    pub fn scheduling(mut self, scheduling: Scheduling) -> Self {
        self.options.scheduling = scheduling;
        self
    }

    /// Runs it on `node`; if that node cannot (gone, too few CPUs), on
    /// another when `soft`, else it fails with `Unschedulable`.
    pub fn node_affinity(self, node: NodeId, soft: bool) -> Self {
        self.scheduling(Scheduling::NodeAffinity { node, soft })
    }

    /// CPUs it needs (Ray's `num_cpus`, default 1): only a node with that
    /// many runs it.
    pub fn num_cpus(mut self, cpus: f64) -> Self {
        self.options.num_cpus = cpus;
        self
    }

    /// An amount of a custom resource it needs (Ray's `resources`): only a
    /// node that has that much free (not reserved by a placement group) runs
    /// it. A placement for the node, as `num_cpus` is: running tasks do not
    /// count it down.
    pub fn resource(mut self, name: impl Into<String>, amount: f64) -> Self {
        self.options.resources.insert(name.into(), amount);
        self
    }

    /// Runs it in a placement group (Ray's `PlacementGroupSchedulingStrategy`):
    /// on the node of bundle `bundle`, or of any bundle it fits when `None`,
    /// out of what the bundle reserves (its `num_cpus` and resources must
    /// fit in the bundle). It fails with `Unschedulable` if the group is not
    /// placed yet (wait for [`ready`](crate::PlacementGroup::ready)) or is
    /// removed.
    pub fn placement_group(self, pg: &crate::PlacementGroup, bundle: Option<usize>) -> Self {
        self.scheduling(Scheduling::PlacementGroup {
            group: pg.id(),
            bundle: bundle.map(|b| b.min(u32::MAX as usize) as u32),
        })
    }

    /// Submits the task; the result's `ObjectRef` comes back at once.
    pub fn remote(&self, args: impl IntoArgs<Args>) -> ObjectRef<R> {
        let node = self.rt.node();
        let mut pins = Vec::new();
        let args = args.into_args(&mut pins);
        let ret = node.new_pending();
        let spec = TaskSpec {
            task_id: rayx_actors::ids::TaskId(ret.id()),
            function: Cow::Borrowed(self.name),
            args,
            options: self.options.clone(),
        };
        node.submit_task(spec, &ret, pins);
        ObjectRef::from_slot(ret)
    }
}
