//! Orders joined with their payments: a payment within 30 minutes of its
//! order (before or after: clocks disagree) pays it; each pair goes to
//! `paid` as soon as both are there; an order that no payment joined goes to
//! `unpaid` once no payment can join it any more (stream time 30 + 30 + 5
//! minutes after the order: a payment up to 30 minutes after it may come up
//! to 35 minutes late). Orders and payments are keyed by order id and arrive on two
//! co-partitioned topics. Kafka Streams' `orders.leftJoin(payments, joiner,
//! JoinWindows.ofTimeDifferenceAndGrace(30m, 5m))`.

use std::time::Duration;

use weir_sdk::prelude::*;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Order {
    pub customer: String,
    pub amount: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Payment {
    pub amount: u64,
}

/// What goes out: the order and, when one joined it, its payment.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Outcome {
    pub customer: String,
    pub amount: u64,
    pub paid: Option<u64>,
}

pub struct OrderPayment {
    join: StreamJoin,
}

impl Default for OrderPayment {
    fn default() -> Self {
        let windows = JoinWindows::of(Duration::from_secs(30 * 60)).grace(Duration::from_secs(5 * 60));
        let join = StreamJoin::new("orders", "payments", windows, JoinKind::Left).to("paid").unmatched_to("unpaid");
        OrderPayment { join }
    }
}

fn outcome(order: Option<&Order>, payment: Option<&Payment>) -> Outcome {
    let order = order.expect("a left join emits no payment without its order");
    Outcome { customer: order.customer.clone(), amount: order.amount, paid: payment.map(|p| p.amount) }
}

impl Processor for OrderPayment {
    fn process(&mut self, ctx: &mut Context, rec: Record) -> Result<()> {
        match rec.source() {
            Some("orders") => self.join.add_left::<Order, Payment, Outcome>(ctx, &rec, &outcome),
            Some("payments") => self.join.add_right::<Order, Payment, Outcome>(ctx, &rec, &outcome),
            other => bail!("a record from {other:?}: this processor reads the sources `orders` and `payments`"),
        }
    }

    fn on_timer(&mut self, ctx: &mut Context, timer: Timer) -> Result<()> {
        self.join.on_timer::<Order, Payment, Outcome>(ctx, &timer, &outcome)?;
        Ok(())
    }
}

export_processor!(OrderPayment::default());

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::TestDriver;

    const MIN: i64 = 60_000;

    fn order(id: &str, amount: u64, minute: i64) -> Record {
        Record::from_json(id, &Order { customer: "c".into(), amount }).at(minute * MIN).from_source("orders")
    }

    fn payment(id: &str, amount: u64, minute: i64) -> Record {
        Record::from_json(id, &Payment { amount }).at(minute * MIN).from_source("payments")
    }

    #[test]
    fn paid_orders_join_at_once_and_unpaid_ones_go_out_when_their_window_closes() {
        let mut d = TestDriver::new(OrderPayment::default())
            .with_store("orders")
            .with_store("payments")
            .with_outputs(["paid", "unpaid"]);
        d.process(order("o1", 10, 0)).unwrap();
        d.process(order("o2", 20, 1)).unwrap();
        d.process(payment("o1", 10, 20)).unwrap();
        assert_eq!(d.emitted_to("paid").len(), 1);
        d.process(payment("o3", 5, 30)).unwrap(); // before its order
        d.process(order("o3", 5, 31)).unwrap();
        assert_eq!(d.emitted_to("paid").len(), 2);
        assert!(d.emitted_to("unpaid").is_empty(), "o2 is let go at 66 min");
        d.process(payment("x", 1, 66)).unwrap();
        let unpaid: Vec<Outcome> = d.emitted_to("unpaid").iter().map(|e| e.json().unwrap()).collect();
        assert_eq!(unpaid, vec![Outcome { customer: "c".into(), amount: 20, paid: None }]);
        assert_eq!(d.emitted_to("unpaid")[0].timestamp, MIN, "at the order's time");
    }
}
