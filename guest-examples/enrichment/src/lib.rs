//! `enrichment`: join orders with reference data from a store.
//!
//! A stream-table lookup join: for each order, read the record whose key is
//! the order's `field` (e.g. `customer_id`) from the store `store`, embed it
//! in the order under `into`, and emit the result to `enriched`. An order whose
//! reference is missing is not dropped: it goes to `unmatched` with the reason,
//! so a broken join is visible (the silent never-matching join is the classic
//! symptom of a co-partitioning bug).
//!
//! The same component does both joins of the example app:
//! - against the `customers` table: orders keyed by `customer_id`, the table
//!   co-partitioned with them, so each task holds exactly the customers of
//!   its orders;
//! - against the `products` global table: replicated to every task, so orders
//!   need no repartitioning to be joined on `product_id`.
//!
//! Config: `store`, `field`, `into` (all required).
//!
//! Build: `cargo guests`.

use serde_json::{Map, Value};
use weir_sdk::prelude::*;

#[derive(Default)]
pub struct Enrichment {
    store: String,
    field: String,
    into: String,
}

/// What goes to `unmatched`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Unmatched {
    pub order: Value,
    pub reason: String,
}

impl Processor for Enrichment {
    fn init(&mut self, _ctx: &mut Context, config: &Config) -> Result<()> {
        self.store = config.require("store")?.to_owned();
        self.field = config.require("field")?.to_owned();
        self.into = config.require("into")?.to_owned();
        Ok(())
    }

    fn process(&mut self, ctx: &mut Context, rec: Record) -> Result<()> {
        let mut order: Map<String, Value> = rec.json()?;
        let reference = match order.get(&self.field) {
            Some(Value::String(s)) => s.clone(),
            Some(other) => bail!("order field `{}` must be a string, got {other}", self.field),
            None => bail!("order has no `{}` field", self.field),
        };
        let lookup = ctx.store::<String, Value>(&self.store);
        match lookup.get(&reference)? {
            Some(found) => {
                order.insert(self.into.clone(), found);
                ctx.emit_json("enriched", rec.key(), &order)
            }
            None => {
                let reason = format!("no `{reference}` in `{}` (order field `{}`)", self.store, self.field);
                ctx.emit_json("unmatched", rec.key(), &Unmatched { order: Value::Object(order), reason })
            }
        }
    }
}

export_processor!(Enrichment::default());

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use weir_sdk::testing::TestDriver;

    fn driver() -> TestDriver<Enrichment> {
        TestDriver::new(Enrichment::default())
            .with_config("store", "customers")
            .with_config("field", "customer_id")
            .with_config("into", "customer")
            .with_table_store("customers")
            .with_outputs(["enriched", "unmatched"])
    }

    #[test]
    fn embeds_the_referenced_record() {
        let mut d = driver();
        d.store::<String, Value>("customers").put("c1", &json!({"name": "Ada"})).unwrap();
        d.process(Record::from_json("c1", &json!({"order_id": "o1", "customer_id": "c1"}))).unwrap();
        let out: Value = d.emitted_to("enriched")[0].json().unwrap();
        assert_eq!(out["customer"]["name"], "Ada");
    }

    #[test]
    fn unknown_references_are_reported_not_dropped() {
        let mut d = driver();
        d.process(Record::from_json("c9", &json!({"order_id": "o2", "customer_id": "c9"}))).unwrap();
        let out: Unmatched = d.emitted_to("unmatched")[0].json().unwrap();
        assert!(out.reason.contains("no `c9` in `customers`"), "{}", out.reason);
    }

    #[test]
    fn orders_without_the_field_are_errors() {
        let mut d = driver();
        assert!(d.process(Record::from_json("c1", &json!({"order_id": "o3"}))).is_err());
        assert!(d.emitted().is_empty());
    }
}
