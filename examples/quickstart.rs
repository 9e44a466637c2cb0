//! The Ray Core walkthrough's three examples, in rayx.
//!
//! Run: `cargo run --release --example quickstart`

use rayx::prelude::*;

// 1. A remote function: `@ray.remote def square(x): return x * x`.
fn square(x: i64) -> i64 {
    x * x
}
rayx::remote!(square);

// 2. An actor with a method: `my_method(x) = x * x`.
struct MyActor;
impl Actor for MyActor {}

#[derive(Serialize, Deserialize)]
struct MyMethod(i64);
impl Message for MyMethod {
    type Reply = i64;
}
impl Handler<MyMethod> for MyActor {
    fn handle(&mut self, MyMethod(x): MyMethod, _: &mut ActorContext<Self>) -> i64 {
        x * x
    }
}

// 3. An actor holding an object, read back with `get_x`.
struct ObjectHolder {
    x: ObjectRef<Vec<i64>>,
}
impl Actor for ObjectHolder {}

#[derive(Serialize, Deserialize)]
struct GetX;
impl Message for GetX {
    type Reply = Vec<i64>;
}
impl Handler<GetX> for ObjectHolder {
    fn handle(&mut self, _: GetX, _: &mut ActorContext<Self>) -> Vec<i64> {
        self.x.get().unwrap_or_default()
    }
}

fn main() -> rayx::Result<()> {
    let rt = rayx::init()?;

    // Tasks: four calls in parallel, then get them all.
    let futures: Vec<ObjectRef<i64>> = (0..4).map(|i| rt.task(square).remote(i)).collect();
    println!("tasks:   {:?}", rt.get(&futures, None)?);

    // Actors: four calls to one actor, run in order.
    let actor = rt.actor(|| MyActor).spawn()?;
    let replies: Vec<ObjectRef<i64>> = (0..4).map(|i| actor.call(MyMethod(i))).collect();
    println!("actor:   {:?}", rt.get(&replies, None)?);

    // Objects: put a value, hand its ref to an actor, read it back through the actor.
    let x = rt.put(vec![1, 2, 3])?;
    let holder = rt.actor(move || ObjectHolder { x: x.clone() }).spawn()?;
    println!("objects: {:?}", holder.call(GetX).get()?);

    rt.shutdown();
    Ok(())
}
