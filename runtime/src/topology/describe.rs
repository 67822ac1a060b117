//! The graph of a compiled [`Topology`] as JSON, for people: every source,
//! table, global table, repartition topic, processor, store and sink as a
//! node with its sub-topology, and every edge with what flows along it. The
//! web console draws it (the `topology` of `GET /v1/apps/{name}`); it is
//! the Kafka Streams `Topology#describe()` of a weir application.

use serde_json::{Value, json};

use super::{NodeKind, Target, Topology};

impl Topology {
    /// Nodes (`id`, `kind`, `name`, `subtopology` and what the kind has:
    /// `topic`, `component`, `stores`, `changelog`) and edges (`from`, `to`,
    /// `kind`: `records`, `repartition`, `sink`, `store` or `reads-store`).
    /// Ids are `<kind>:<name>`; sinks are named by their topic.
    pub fn describe(&self) -> Value {
        let mut nodes = Vec::new();
        let mut edges = Vec::new();
        let id_of = |n: usize| node_id(&self.nodes[n]);
        for node in &self.nodes {
            let id = node_id(node);
            let mut described = json!({ "id": id, "name": node.name, "subtopology": node.subtopology });
            match &node.kind {
                NodeKind::Source(input) => {
                    described["kind"] = json!("source");
                    described["topic"] = json!(input.topic);
                }
                NodeKind::Table { input, store } => {
                    described["kind"] = json!("table");
                    described["topic"] = json!(input.topic);
                    edges.push(edge(&id, &store_id(self, *store), "store"));
                }
                NodeKind::Repartition { topic } => {
                    described["kind"] = json!("repartition");
                    described["topic"] = json!(topic);
                }
                NodeKind::Processor(p) => {
                    described["kind"] = json!("processor");
                    described["component"] = json!(p.component);
                    described["stores"] = json!(p.stores.iter().map(|s| &s.name).collect::<Vec<_>>());
                    for grant in &p.stores {
                        let kind = if grant.writable { "store" } else { "reads-store" };
                        edges.push(edge(&id, &store_id(self, grant.store), kind));
                    }
                    for output in &p.outputs {
                        for target in &output.targets {
                            match target {
                                Target::Processor(to) => edges.push(edge(&id, &id_of(*to), "records")),
                                Target::Topic { topic, internal: true } => edges.push(edge(
                                    &id,
                                    &format!("repartition:{}", self.repartition_name(topic)),
                                    "repartition",
                                )),
                                Target::Topic { topic, internal: false } => {
                                    edges.push(edge(&id, &format!("sink:{topic}"), "sink"))
                                }
                            }
                        }
                    }
                }
            }
            for to in &node.to {
                edges.push(edge(&id, &id_of(*to), "records"));
            }
            nodes.push(described);
        }
        for global in &self.globals {
            let id = format!("global-table:{}", global.name);
            nodes.push(json!({ "id": id, "kind": "global-table", "name": global.name, "topic": global.input.topic, "subtopology": null }));
            edges.push(edge(&id, &store_id(self, global.store), "store"));
        }
        for store in &self.stores {
            nodes.push(json!({
                "id": format!("store:{}", store.name), "kind": "store", "name": store.name,
                "subtopology": store.subtopology, "changelog": store.changelog,
            }));
        }
        let mut sinks: Vec<&String> = self
            .nodes
            .iter()
            .filter_map(|n| match &n.kind {
                NodeKind::Processor(p) => Some(p.outputs.iter().flat_map(|o| &o.targets)),
                _ => None,
            })
            .flatten()
            .filter_map(|t| match t {
                Target::Topic { topic, internal: false } => Some(topic),
                _ => None,
            })
            .collect();
        sinks.sort();
        sinks.dedup();
        for topic in sinks {
            nodes.push(json!({ "id": format!("sink:{topic}"), "kind": "sink", "name": topic, "topic": topic, "subtopology": null }));
        }
        let subtopologies: Vec<_> = self
            .subtopologies
            .iter()
            .map(|s| {
                json!({ "id": s.id, "partitions": s.partitions, "inputs": s.inputs.iter().map(|(t, _)| t).collect::<Vec<_>>() })
            })
            .collect();
        json!({ "subtopologies": subtopologies, "nodes": nodes, "edges": edges, "dead_letter_topic": self.dead_letter_topic })
    }

    /// The repartition node reading an internal topic (its name, or the
    /// topic when no node reads it).
    fn repartition_name(&self, topic: &str) -> String {
        self.nodes
            .iter()
            .find(|n| matches!(&n.kind, NodeKind::Repartition { topic: t } if t == topic))
            .map_or_else(|| topic.to_owned(), |n| n.name.clone())
    }
}

fn node_id(node: &super::Node) -> String {
    let kind = match node.kind {
        NodeKind::Source(_) => "source",
        NodeKind::Table { .. } => "table",
        NodeKind::Repartition { .. } => "repartition",
        NodeKind::Processor(_) => "processor",
    };
    format!("{kind}:{}", node.name)
}

fn store_id(topology: &Topology, store: usize) -> String {
    format!("store:{}", topology.stores[store].name)
}

fn edge(from: &str, to: &str, kind: &str) -> Value {
    json!({ "from": from, "to": to, "kind": kind })
}

#[cfg(test)]
mod tests {
    use crate::topology::parse_spec;

    fn graph(spec_yaml: &str) -> serde_json::Value {
        crate::topology::Topology::compile(parse_spec(spec_yaml).unwrap()).unwrap().describe()
    }

    fn node_ids(graph: &serde_json::Value) -> Vec<&str> {
        let mut ids: Vec<&str> = graph["nodes"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap()).collect();
        ids.sort();
        ids
    }

    fn edge_lines(graph: &serde_json::Value) -> Vec<String> {
        let line = |e: &serde_json::Value| {
            format!("{} -{}-> {}", e["from"].as_str().unwrap(), e["kind"].as_str().unwrap(), e["to"].as_str().unwrap())
        };
        let mut edges: Vec<String> = graph["edges"].as_array().unwrap().iter().map(line).collect();
        edges.sort();
        edges
    }

    #[test]
    fn a_table_and_a_global_table_are_nodes_with_their_stores_read_by_processors() {
        let graph = graph(include_str!("../../../guest-examples/enrichment/app.yaml"));
        assert_eq!(
            node_ids(&graph),
            [
                "global-table:products",
                "processor:by-customer",
                "processor:by-product",
                "sink:orders-enriched",
                "sink:orders-unmatched",
                "source:orders",
                "store:customers",
                "store:products",
                "table:customers",
            ]
        );
        assert_eq!(
            edge_lines(&graph),
            [
                "global-table:products -store-> store:products",
                "processor:by-customer -reads-store-> store:customers",
                "processor:by-customer -records-> processor:by-product",
                "processor:by-customer -sink-> sink:orders-unmatched",
                "processor:by-product -reads-store-> store:products",
                "processor:by-product -sink-> sink:orders-enriched",
                "processor:by-product -sink-> sink:orders-unmatched",
                "source:orders -records-> processor:by-customer",
                "table:customers -store-> store:customers",
            ]
        );
        let node = |id: &str| graph["nodes"].as_array().unwrap().iter().find(|n| n["id"] == id).unwrap().clone();
        assert_eq!(node("global-table:products")["subtopology"], serde_json::Value::Null, "global: in no sub-topology");
        assert_eq!(node("table:customers")["topic"], "customers");
    }

    #[test]
    fn the_reservation_graph_has_every_node_and_edge_of_its_spec() {
        let graph = graph(include_str!("../../../guest-examples/reservation/app.yaml"));
        // The same list the console's browser test checks the page against.
        let want: serde_json::Value =
            serde_json::from_str(include_str!("../../../tests/console/reservation-graph.json")).unwrap();
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect()
        };
        assert_eq!(node_ids(&graph), strings(&want["nodes"]));
        assert_eq!(edge_lines(&graph), strings(&want["edges"]));
        // Two sub-topologies: the repartition topic is the boundary.
        assert_eq!(graph["subtopologies"].as_array().unwrap().len(), 2);
        let sub = |id: &str| {
            graph["nodes"].as_array().unwrap().iter().find(|n| n["id"] == id).unwrap()["subtopology"].clone()
        };
        assert_eq!(sub("processor:rekey"), 0);
        assert_eq!(sub("processor:reserve"), 1);
        assert_eq!(sub("store:stock"), 1);
    }
}
