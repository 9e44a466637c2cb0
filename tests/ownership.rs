//! Ownership: refs whose owner died.

mod common;

use common::failing::*;
use common::LONG;
use rayx::prelude::*;

fn read_through(r: ObjectRef<u64>) -> Result<u64, String> {
    r.get().map_err(|e| e.to_string())
}
fn to_u64_plus(x: u64) -> u64 {
    x + 1
}
rayx::remote!(read_through, to_u64_plus);

#[test]
fn refs_whose_owner_died_fail_with_owner_died() {
    let owner = rt2();
    let borrower = rt2();
    let g = common::gate();
    let owned = owner.task(held).remote(g);
    // A task of another runtime waits for it as an argument, another holds the ref.
    let dependent = borrower.task(to_u64_plus).remote(&owned);
    let reader = borrower.task(read_through).remote(owned.clone());
    owner.shutdown();
    match dependent.get_timeout(LONG) {
        Err(e) => assert!(matches!(e.root_cause(), Error::OwnerDied { .. }), "{e:?}"),
        other => panic!("unexpected {other:?}"),
    }
    // The reader returned the error it got: its task fails with that text.
    match reader.get_timeout(LONG) {
        Err(Error::TaskFailed { cause, .. }) => assert!(cause.contains("owner"), "{cause}"),
        other => panic!("unexpected {other:?}"),
    }
    // Seen from the driver, whose runtime it was, it is the shutdown.
    assert_eq!(owned.get_timeout(LONG), Err(Error::ShutDown));
    common::open(g);
}
