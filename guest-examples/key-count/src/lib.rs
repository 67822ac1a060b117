//! `key-count`: for each record with key `k`, increments `counts[k]` and emits
//! `{"key": k, "count": n, "version": V}` to the output `counts`.
//!
//! The simplest oracle for exactly-once and hot swap: per key, the emitted
//! counts must be exactly 1..n, with no gap (nothing lost) and no repeat
//! (nothing duplicated). `V` is 1, or 2 when built with `--features v2`, so a
//! hot swap shows in the output exactly where it happened.
//!
//! Build: `cargo guests`.

use weir_sdk::prelude::*;

/// The version this build reports.
pub const VERSION: u32 = if cfg!(feature = "v2") { 2 } else { 1 };

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct Count {
    pub key: String,
    pub count: i64,
    pub version: u32,
}

pub struct KeyCount;

impl Processor for KeyCount {
    fn process(&mut self, ctx: &mut Context, rec: Record) -> Result<()> {
        let key = rec.key().ok_or_else(|| Error::msg("key-count needs keyed records"))?;
        let counts = ctx.store::<Vec<u8>, i64>("counts");
        let count = counts.get(key)?.unwrap_or(0) + 1;
        counts.put(key, &count)?;
        let out = Count { key: String::from_utf8_lossy(key).into_owned(), count, version: VERSION };
        ctx.emit_json("counts", rec.key(), &out)
    }
}

export_processor!(KeyCount);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::TestDriver;

    #[test]
    fn counts_per_key_from_one() {
        let mut d = TestDriver::new(KeyCount).with_store("counts").with_outputs(["counts"]);
        for k in ["a", "b", "a", "a"] {
            d.process(Record::new(k, "x")).unwrap();
        }
        let counts: Vec<Count> = d.emitted().iter().map(|e| e.json().unwrap()).collect();
        let a: Vec<i64> = counts.iter().filter(|c| c.key == "a").map(|c| c.count).collect();
        assert_eq!(a, [1, 2, 3]);
        assert!(counts.iter().all(|c| c.version == VERSION));
    }

    #[test]
    fn keyless_records_are_an_error() {
        let mut d = TestDriver::new(KeyCount).with_store("counts").with_outputs(["counts"]);
        assert!(d.process(Record::new((), "x")).is_err());
        assert!(d.emitted().is_empty());
    }
}
