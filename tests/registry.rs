//! The function registry: a name registered twice is refused at start, naming
//! both places (this binary registers one on purpose, so no runtime starts in it).

use rayx::prelude::*;

fn twice(x: u8) -> u8 {
    x
}
rayx::remote!(twice);
rayx::remote!(twice);

#[test]
fn a_function_registered_twice_is_refused_at_start_naming_both_places() {
    match rayx::init() {
        Err(Error::InvalidArgument(why)) => {
            assert!(why.contains("registry::twice"), "{why}");
            assert!(why.contains("tests/registry.rs:9"), "{why}");
            assert!(why.contains("tests/registry.rs:10"), "{why}");
        }
        other => panic!("unexpected {other:?}"),
    }
}
