//! `reservation`: reserve stock for orders, atomically, per product.
//!
//! The inventory service of "Building a Microservices Ecosystem with Kafka
//! Streams": orders arrive keyed by order id; to check and reserve stock
//! without remote locks, they are rekeyed by product id through a
//! repartition edge, so every order for a product lands in the task that owns
//! that product's stock. Stock comes from an adjustments stream keyed by
//! product id (co-partitioned with the repartitioned orders). Reserving is a
//! read-check-write of the `stock` store inside weir's transaction, so an
//! order is validated exactly once and stock never goes negative.
//!
//! One component, two roles (config `role`):
//! - `rekey`: order → output `by-product`, keyed by `product_id`.
//! - `reserve`: adjustments (`adjustments_topic`, default `adjustments`) add
//!   `delta` to stock (one that would overflow it traps); orders reserve `qty` if that much is left and go to
//!   `validated`, else to `rejected`, keyed by order id.
//!
//! Build: `cargo guests`.

use weir_sdk::prelude::*;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Order {
    pub order_id: String,
    pub product_id: String,
    pub qty: i64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Adjustment {
    pub product_id: String,
    pub delta: i64,
}

/// What `reserve` emits for an order.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Decision {
    #[serde(flatten)]
    pub order: Order,
    pub status: String,
    /// Stock left after this order (validated) or available (rejected).
    pub stock: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Rekey,
    Reserve,
}

pub struct Reservation {
    role: Role,
    adjustments_topic: String,
}

impl Default for Reservation {
    fn default() -> Self {
        Reservation { role: Role::Reserve, adjustments_topic: "adjustments".to_owned() }
    }
}

fn parse_order(rec: &Record) -> Result<Order> {
    let order: Order = rec.json()?;
    if order.qty <= 0 {
        bail!("order {} has quantity {}; quantities must be positive", order.order_id, order.qty);
    }
    Ok(order)
}

impl Processor for Reservation {
    fn init(&mut self, _ctx: &mut Context, config: &Config) -> Result<()> {
        self.role = match config.require("role")? {
            "rekey" => Role::Rekey,
            "reserve" => Role::Reserve,
            other => bail!("config role = `{other}`: expected `rekey` or `reserve`"),
        };
        if let Some(topic) = config.get("adjustments_topic") {
            self.adjustments_topic = topic.to_owned();
        }
        Ok(())
    }

    fn process(&mut self, ctx: &mut Context, rec: Record) -> Result<()> {
        match self.role {
            Role::Rekey => {
                let order = parse_order(&rec)?;
                ctx.emit("by-product", order.product_id.as_str(), rec.value())
            }
            Role::Reserve if rec.topic() == self.adjustments_topic => {
                let adj: Adjustment = rec.json()?;
                let stock = ctx.store::<String, i64>("stock");
                let current = stock.get(&adj.product_id)?.unwrap_or(0);
                // A stock level past i64 means the adjustments are wrong
                // upstream: stop loudly rather than wrap around. The panic
                // traps the call; weir dead-letters this one adjustment (kind
                // `trap`), rebuilds the instance and goes on with the rest.
                let level = current
                    .checked_add(adj.delta)
                    .unwrap_or_else(|| panic!("stock of {} overflows: {current} + {}", adj.product_id, adj.delta));
                stock.put(&adj.product_id, &level)
            }
            Role::Reserve => {
                let order = parse_order(&rec)?;
                let stock = ctx.store::<String, i64>("stock");
                let left = stock.get(&order.product_id)?.unwrap_or(0);
                let key = order.order_id.clone();
                if left >= order.qty {
                    let remaining = left - order.qty;
                    stock.put(&order.product_id, &remaining)?;
                    let d = Decision { order, status: "validated".into(), stock: remaining };
                    ctx.emit_json("validated", key.as_str(), &d)
                } else {
                    let d = Decision { order, status: "rejected".into(), stock: left };
                    ctx.emit_json("rejected", key.as_str(), &d)
                }
            }
        }
    }
}

export_processor!(Reservation::default());

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::TestDriver;

    fn reserve() -> TestDriver<Reservation> {
        TestDriver::new(Reservation::default())
            .with_config("role", "reserve")
            .with_store("stock")
            .with_outputs(["validated", "rejected"])
    }

    fn order(id: &str, product: &str, qty: i64) -> Record {
        Record::from_json(product, &Order { order_id: id.into(), product_id: product.into(), qty }).on_topic("rekeyed")
    }

    #[test]
    fn reserves_until_stock_runs_out() {
        let mut d = reserve();
        d.process(Record::from_json("p1", &Adjustment { product_id: "p1".into(), delta: 5 }).on_topic("adjustments"))
            .unwrap();
        for (id, qty) in [("o1", 2), ("o2", 4), ("o3", 3)] {
            d.process(order(id, "p1", qty)).unwrap();
        }
        let outcome: Vec<(String, i64)> =
            d.emitted().iter().map(|e| e.json::<Decision>().unwrap()).map(|d| (d.status, d.stock)).collect();
        assert_eq!(outcome, [("validated".into(), 3), ("rejected".into(), 3), ("validated".into(), 0)]);
        assert_eq!(d.store::<String, i64>("stock").get("p1").unwrap(), Some(0));
    }

    #[test]
    fn rekey_keys_by_product_and_keeps_the_value() {
        let mut d = TestDriver::new(Reservation::default()).with_config("role", "rekey").with_outputs(["by-product"]);
        let rec = Record::from_json("o1", &Order { order_id: "o1".into(), product_id: "p9".into(), qty: 1 });
        d.process(rec.clone()).unwrap();
        assert_eq!(d.emitted()[0].key_str().as_deref(), Some("p9"));
        assert_eq!(d.emitted()[0].value.as_deref(), rec.value());
    }

    #[test]
    fn bad_orders_and_roles_are_errors() {
        let mut d = reserve();
        assert!(d.process(order("o1", "p1", 0)).unwrap_err().message().contains("must be positive"));
        assert!(d.process(Record::new("p1", "not json").on_topic("rekeyed")).is_err());
        let mut bad = TestDriver::new(Reservation::default()).with_config("role", "nope");
        assert!(bad.init().unwrap_err().message().contains("expected `rekey` or `reserve`"));
    }

    #[test]
    #[should_panic(expected = "stock of p1 overflows")]
    fn an_adjustment_overflowing_the_stock_panics() {
        let mut d = reserve();
        let adjust =
            |delta| Record::from_json("p1", &Adjustment { product_id: "p1".into(), delta }).on_topic("adjustments");
        d.process(adjust(5)).unwrap();
        let _ = d.process(adjust(i64::MAX));
    }
}
