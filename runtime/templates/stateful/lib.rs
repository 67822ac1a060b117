//! {{name}}: a stateful weir processor. It counts records per key in the
//! store `counts` and emits `{"key", "count"}` to the output `counts`. The
//! store survives restarts, rebalances and hot swaps (the host keeps it, with
//! a changelog, exactly-once).

use weir_sdk::prelude::*;

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct Counted {
    pub key: String,
    pub count: i64,
}

pub struct Count;

impl Processor for Count {
    fn process(&mut self, ctx: &mut Context, rec: Record) -> Result<()> {
        let key = rec.key_str()?.to_owned();
        let counts = ctx.store::<String, i64>("counts");
        let count = counts.get(&key)?.unwrap_or(0) + 1;
        counts.put(&key, &count)?;
        ctx.emit_json("counts", rec.key(), &Counted { key, count })
    }
}

export_processor!(Count);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::TestDriver;

    #[test]
    fn counts_per_key_from_one() {
        let mut d = TestDriver::new(Count).with_store("counts").with_outputs(["counts"]);
        for key in ["a", "b", "a"] {
            d.process(Record::new(key, "x")).unwrap();
        }
        let counts: Vec<Counted> = d.emitted().iter().map(|e| e.json().unwrap()).collect();
        assert_eq!(counts[2], Counted { key: "a".into(), count: 2 });
        assert_eq!(d.store::<String, i64>("counts").get("b").unwrap(), Some(1));
    }
}
