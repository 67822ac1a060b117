//! {{name}}: a stateless weir processor. Each order goes to the output
//! `large` when its amount is at least the spec's `threshold` (config), else
//! to `small`, with a `size` field added.

use weir_sdk::prelude::*;

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct Order {
    pub id: String,
    pub amount: i64,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct SizedOrder {
    pub id: String,
    pub amount: i64,
    pub size: String,
}

/// The processor's `config` in app.yaml, typed.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Orders of at least this amount are `large`.
    pub threshold: i64,
}

pub struct Route {
    threshold: i64,
}

impl Default for Route {
    fn default() -> Self {
        Route { threshold: 100 }
    }
}

impl Processor for Route {
    fn init(&mut self, _ctx: &mut Context, config: &Config) -> Result<()> {
        self.threshold = config.deserialize::<RouteConfig>()?.threshold;
        Ok(())
    }

    fn process(&mut self, ctx: &mut Context, rec: Record) -> Result<()> {
        let order: Order = rec.json()?;
        let size = if order.amount >= self.threshold { "large" } else { "small" };
        let out = SizedOrder { id: order.id, amount: order.amount, size: size.to_owned() };
        ctx.emit_json(size, rec.key(), &out)
    }
}

export_processor!(Route::default());

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::TestDriver;

    #[test]
    fn orders_are_routed_by_amount() {
        let mut d = TestDriver::new(Route::default()).with_config("threshold", "100").with_outputs(["large", "small"]);
        d.process(Record::from_json("o1", &Order { id: "o1".into(), amount: 250 })).unwrap();
        d.process(Record::from_json("o2", &Order { id: "o2".into(), amount: 20 })).unwrap();
        let large: SizedOrder = d.emitted_to("large")[0].json().unwrap();
        assert_eq!(large.size, "large");
        assert_eq!(d.emitted_to("small").len(), 1);
    }
}
