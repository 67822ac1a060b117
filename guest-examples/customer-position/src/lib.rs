//! `customer-position`: which clients hold positions on a US exchange.
//!
//! From "Proof of concept using KafkaStreams and KTables" (Dan Lebrero): the
//! order booking system keeps a compacted topic of open positions keyed by
//! position id. We want, per client, the set of that client's positions on a
//! US exchange, and a client with none left must disappear. That is a KTable
//! `groupBy(client)` + `reduce(adder, subtractor)`: every change of a
//! position must subtract its old value and add its new one, which is why weir
//! hands table changes to processors with their old value.
//!
//! One component, two roles (config `role`):
//! - `group` receives changes of the `positions` table. For the old value (if
//!   it was on a US exchange) it emits `{"op":"remove","position":id}` keyed by
//!   the old client; for the new value (if on a US exchange) `{"op":"add",...}`
//!   keyed by the new client, to output `by-client` (a repartition edge).
//!   A change that keeps a position on a US exchange for the same client
//!   changes no set and emits nothing.
//! - `aggregate` applies those to the `us-share-holders` store (client → set
//!   of position ids) and emits the client's set to `holders`, or a tombstone
//!   when the set becomes empty.
//!
//! Config `us_exchanges` (default `NASDAQ,NYSE`) lists the US exchanges.
//!
//! Build: `cargo guests`.

use std::collections::BTreeSet;

use weir_sdk::prelude::*;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Position {
    pub id: String,
    pub client: String,
    pub ticker: String,
    pub amount: i64,
    pub exchange: String,
}

/// A membership change sent through the repartition edge.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub op: Op,
    pub position: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Add,
    Remove,
}

/// What `aggregate` emits for a client.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub client: String,
    pub positions: BTreeSet<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Group,
    Aggregate,
}

pub struct CustomerPosition {
    role: Role,
    us_exchanges: Vec<String>,
}

impl Default for CustomerPosition {
    fn default() -> Self {
        CustomerPosition { role: Role::Group, us_exchanges: vec!["NASDAQ".into(), "NYSE".into()] }
    }
}

impl CustomerPosition {
    fn on_us_exchange(&self, p: &Position) -> bool {
        self.us_exchanges.iter().any(|e| e.eq_ignore_ascii_case(&p.exchange))
    }
}

impl Processor for CustomerPosition {
    fn init(&mut self, _ctx: &mut Context, config: &Config) -> Result<()> {
        self.role = match config.require("role")? {
            "group" => Role::Group,
            "aggregate" => Role::Aggregate,
            other => bail!("config role = `{other}`: expected `group` or `aggregate`"),
        };
        if let Some(list) = config.get("us_exchanges") {
            self.us_exchanges = list.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
        }
        Ok(())
    }

    fn process(&mut self, ctx: &mut Context, rec: Record) -> Result<()> {
        match self.role {
            Role::Group => {
                let old = rec.old_json::<Position>()?.filter(|p| self.on_us_exchange(p));
                let new = rec.new_json::<Position>()?.filter(|p| self.on_us_exchange(p));
                if let (Some(o), Some(n)) = (&old, &new)
                    && o.client == n.client
                    && o.id == n.id
                {
                    return Ok(()); // same client, still US-listed: no set changes
                }
                if let Some(o) = old {
                    ctx.emit_json("by-client", o.client.as_str(), &Membership { op: Op::Remove, position: o.id })?;
                }
                if let Some(n) = new {
                    ctx.emit_json("by-client", n.client.as_str(), &Membership { op: Op::Add, position: n.id })?;
                }
                Ok(())
            }
            Role::Aggregate => {
                let client = rec.key_str()?.to_owned();
                let change: Membership = rec.json()?;
                let holders = ctx.store::<String, BTreeSet<String>>("us-share-holders");
                let mut positions = holders.get(&client)?.unwrap_or_default();
                match change.op {
                    Op::Add => positions.insert(change.position),
                    Op::Remove => positions.remove(&change.position),
                };
                if positions.is_empty() {
                    holders.delete(&client)?;
                    ctx.emit_tombstone("holders", client.as_str())
                } else {
                    holders.put(&client, &positions)?;
                    ctx.emit_json("holders", client.as_str(), &Holder { client: client.clone(), positions })
                }
            }
        }
    }
}

export_processor!(CustomerPosition::default());

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::TestDriver;

    fn pos(id: &str, client: &str, exchange: &str) -> Position {
        Position { id: id.into(), client: client.into(), ticker: "T".into(), amount: 1, exchange: exchange.into() }
    }

    fn group() -> TestDriver<CustomerPosition> {
        TestDriver::new(CustomerPosition::default()).with_config("role", "group").with_outputs(["by-client"])
    }

    fn memberships(d: &TestDriver<CustomerPosition>) -> Vec<(String, Membership)> {
        d.emitted().iter().map(|e| (e.key_str().unwrap(), e.json().unwrap())).collect()
    }

    #[test]
    fn group_subtracts_the_old_value_and_adds_the_new() {
        let mut d = group();
        d.process(Record::table_change("1", Some(&pos("1", "c2", "NYSE")), Some(&pos("1", "c1", "NASDAQ")))).unwrap();
        assert_eq!(
            memberships(&d),
            [
                ("c1".into(), Membership { op: Op::Remove, position: "1".into() }),
                ("c2".into(), Membership { op: Op::Add, position: "1".into() })
            ]
        );
    }

    #[test]
    fn group_ignores_non_us_and_unchanged_membership() {
        let mut d = group();
        d.process(Record::table_change("2", Some(&pos("2", "c1", "LON")), None)).unwrap();
        d.process(Record::table_change("1", Some(&pos("1", "c1", "NASDAQ")), Some(&pos("1", "c1", "NASDAQ")))).unwrap();
        assert!(d.emitted().is_empty());
        d.process(Record::table_change::<Position>("1", None, Some(&pos("1", "c1", "NYSE")))).unwrap();
        assert_eq!(memberships(&d), [("c1".into(), Membership { op: Op::Remove, position: "1".into() })]);
    }

    #[test]
    fn aggregate_removes_a_client_with_no_positions_left() {
        let mut d = TestDriver::new(CustomerPosition::default())
            .with_config("role", "aggregate")
            .with_store("us-share-holders")
            .with_outputs(["holders"]);
        let m = |op, p: &str| Record::from_json("c1", &Membership { op, position: p.into() });
        d.process(m(Op::Add, "1")).unwrap();
        d.process(m(Op::Add, "3")).unwrap();
        d.process(m(Op::Remove, "1")).unwrap();
        d.process(m(Op::Remove, "3")).unwrap();
        let last = d.emitted().last().unwrap();
        assert_eq!(last.value, None, "tombstone when the set is empty");
        let sets: Vec<usize> = d
            .emitted()
            .iter()
            .filter(|e| e.value.is_some())
            .map(|e| e.json::<Holder>().unwrap().positions.len())
            .collect();
        assert_eq!(sets, [1, 2, 1]);
        assert_eq!(d.store::<String, BTreeSet<String>>("us-share-holders").get("c1").unwrap(), None);
    }
}
