//! Fencing tokens: why a lock with leases needs them, and how a guarded
//! resource uses them.
//!
//! A holder can pause (a long GC, a swapped-out process, a slow disk) past
//! the end of its lease without knowing it. The lock service then gives the
//! lock to the next holder, and for a while two processes believe they hold
//! it. The lock cannot prevent the paused one's late write; the resource can:
//! every write carries the writer's fencing token, and the storage actor
//! refuses a token older than the newest it has seen.
//!
//! `cargo run --example fencing`

use rayx::prelude::*;
use rayx::services::lock::LockService;
use std::collections::HashMap;
use std::sync::mpsc;

/// A storage service that checks fencing tokens.
struct Storage {
    /// The newest token a write came with.
    newest: u64,
    data: HashMap<String, String>,
}
impl Actor for Storage {}

#[derive(Serialize, Deserialize)]
struct Write {
    token: u64,
    key: String,
    value: String,
}
impl Message for Write {
    type Reply = ();
}

impl TryHandler<Write> for Storage {
    type Error = String;
    fn handle(&mut self, w: Write, _: &mut ActorContext<Self>) -> Result<(), String> {
        if w.token < self.newest {
            return Err(format!(
                "write of `{}` refused: token {} is older than {}, its lock has passed to another holder",
                w.key, w.token, self.newest
            ));
        }
        self.newest = w.token;
        self.data.insert(w.key, w.value);
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct Read(String);
impl Message for Read {
    type Reply = Option<String>;
}
impl Handler<Read> for Storage {
    fn handle(&mut self, Read(key): Read, _: &mut ActorContext<Self>) -> Option<String> {
        self.data.get(&key).cloned()
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = rayx::init()?;
    let locks = LockService::start(&rt, "fencing")?;
    let storage = rt
        .actor(|| Storage {
            newest: 0,
            data: HashMap::new(),
        })
        .spawn()?;

    // Client 1 takes the lock with a short lease, then "pauses": it waits for
    // client 2, who can only get the lock once client 1's lease has ended.
    let one = locks.acquire("file", Duration::from_millis(300), Duration::from_secs(10))?;
    println!("client 1 holds the lock with token {}", one.token());
    let (written, resume) = mpsc::channel();
    let client_two = std::thread::spawn({
        let (locks, storage) = (locks.clone(), storage.clone());
        move || -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
            let two = locks.acquire("file", Duration::from_secs(10), Duration::from_secs(10))?;
            println!(
                "client 2 holds the lock with token {} (client 1's lease ended)",
                two.token()
            );
            storage
                .call(Write {
                    token: two.token(),
                    key: "file".into(),
                    value: "from client 2".into(),
                })
                .get()?;
            println!("client 2 wrote with token {}", two.token());
            written.send(())?;
            Ok(two.token())
        }
    });
    resume.recv()?;

    // Client 1 wakes up and writes, believing it still holds the lock.
    println!("client 1 wakes up and writes with token {}", one.token());
    let late = storage
        .call(Write {
            token: one.token(),
            key: "file".into(),
            value: "from client 1".into(),
        })
        .get();
    match &late {
        Err(Error::CallFailed { cause, .. }) => println!("storage: {cause}"),
        other => panic!("the stale write should be refused, got {other:?}"),
    }
    // Its lease is over: the service says so too.
    match one.release() {
        Err(e) => println!("client 1's release: {e}"),
        Ok(()) => panic!("client 1's lease had ended"),
    }
    let two = client_two
        .join()
        .map_err(|_| "client 2 panicked")?
        .map_err(|e| e.to_string())?;
    let value = storage.call(Read("file".into())).get()?;
    assert_eq!(value.as_deref(), Some("from client 2"));
    println!("the file holds {value:?}, written with token {two}");
    Ok(())
}
