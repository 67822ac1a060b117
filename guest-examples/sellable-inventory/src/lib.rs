//! `sellable-inventory`: what can be sold = adjustments − reservations, per
//! location and SKU.
//!
//! From "Kafka Streams and CQRS: sellable inventory": warehouse adjustments
//! (increments) and web-shop reservations (decrements) arrive on two topics,
//! both keyed by `location:sku` and co-partitioned. This processor keeps the
//! running totals per key in the store `sellable` (queryable over weir's REST
//! API from any instance) and emits the new sellable quantity to `sellable`
//! on every change.
//!
//! Config: `reservations_topic` (default `inventory-reservations`); records
//! from any other input topic are adjustments.
//!
//! Build: `cargo guests`.

use weir_sdk::prelude::*;

/// An adjustment or a reservation.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Mutation {
    pub location: String,
    pub sku: String,
    pub quantity: i64,
}

/// The state per location+SKU, and what is emitted.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Sellable {
    pub location: String,
    pub sku: String,
    pub adjusted: i64,
    pub reserved: i64,
    pub sellable: i64,
}

pub struct SellableInventory {
    reservations_topic: String,
}

impl Default for SellableInventory {
    fn default() -> Self {
        SellableInventory { reservations_topic: "inventory-reservations".to_owned() }
    }
}

impl Processor for SellableInventory {
    fn init(&mut self, _ctx: &mut Context, config: &Config) -> Result<()> {
        if let Some(topic) = config.get("reservations_topic") {
            self.reservations_topic = topic.to_owned();
        }
        Ok(())
    }

    fn process(&mut self, ctx: &mut Context, rec: Record) -> Result<()> {
        let m: Mutation = rec.json()?;
        let key = format!("{}:{}", m.location, m.sku);
        if rec.key() != Some(key.as_bytes()) {
            bail!("record key must be `{key}` (location:sku) so adjustments and reservations of one SKU meet");
        }
        if m.quantity < 0 {
            bail!("quantity {} is negative; adjustments and reservations carry positive quantities", m.quantity);
        }
        let store = ctx.store::<String, Sellable>("sellable");
        let mut s = store.get(&key)?.unwrap_or_else(|| Sellable {
            location: m.location.clone(),
            sku: m.sku.clone(),
            ..Sellable::default()
        });
        if rec.topic() == self.reservations_topic {
            s.reserved += m.quantity;
        } else {
            s.adjusted += m.quantity;
        }
        s.sellable = s.adjusted - s.reserved;
        store.put(&key, &s)?;
        ctx.emit_json("sellable", key.as_str(), &s)
    }
}

export_processor!(SellableInventory::default());

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::TestDriver;

    fn m(topic: &str, qty: i64) -> Record {
        Record::from_json("L1:S1", &Mutation { location: "L1".into(), sku: "S1".into(), quantity: qty }).on_topic(topic)
    }

    #[test]
    fn sellable_is_adjustments_minus_reservations() {
        let mut d = TestDriver::new(SellableInventory::default()).with_store("sellable").with_outputs(["sellable"]);
        d.process(m("inventory-adjustments", 10)).unwrap();
        d.process(m("inventory-reservations", 3)).unwrap();
        d.process(m("inventory-adjustments", 2)).unwrap();
        let last: Sellable = d.emitted().last().unwrap().json().unwrap();
        assert_eq!((last.adjusted, last.reserved, last.sellable), (12, 3, 9));
        assert_eq!(d.store::<String, Sellable>("sellable").get("L1:S1").unwrap(), Some(last));
    }

    #[test]
    fn a_key_that_does_not_match_the_value_is_refused() {
        let mut d = TestDriver::new(SellableInventory::default()).with_store("sellable").with_outputs(["sellable"]);
        let rec = Record::from_json("L1:S2", &Mutation { location: "L1".into(), sku: "S1".into(), quantity: 1 });
        assert!(d.process(rec).unwrap_err().message().contains("location:sku"));
    }
}
