//! The bank-transfer workload the transactional store's tests share (in one
//! process and across node processes): accounts, a transfer with its marker,
//! and a small deterministic generator.

use rayx::services::kv::{KvError, KvStore};

/// Account `i`'s key.
pub fn account(i: usize) -> String {
    format!("acct-{i:02}")
}

/// The key of transfer `id`'s marker, written in the transfer's transaction.
pub fn marker(id: u64) -> String {
    format!("xfer-{id}")
}

/// Moves `amount` from `from` to `to` and writes the transfer's marker, in
/// one transaction: true if committed, false if declined (not enough money,
/// nothing written).
pub fn transfer(
    store: &KvStore,
    id: u64,
    from: usize,
    to: usize,
    amount: i64,
) -> Result<bool, KvError> {
    let (a, b) = (account(from), account(to));
    store.transact(|t| {
        let v: Vec<Option<i64>> = t.get_many(&[&a, &b])?;
        let (x, y) = (v[0].unwrap_or(0), v[1].unwrap_or(0));
        if x < amount {
            return Ok(false);
        }
        t.put(&a, &(x - amount))?;
        t.put(&b, &(y + amount))?;
        t.put(&marker(id), &(from, to, amount))?;
        Ok(true)
    })
}

/// A small deterministic generator (xorshift), one per client.
pub struct Rng(pub u64);

impl Rng {
    /// The next number below `n`.
    pub fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
