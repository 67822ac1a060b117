//! Spec validation: good specs compile into the expected sub-topologies; bad
//! specs are refused with every problem named by its field path.

use super::*;

fn compile(yaml: &str) -> Result<Topology, SpecError> {
    parse_spec(yaml).and_then(Topology::compile)
}

fn problems(yaml: &str) -> Vec<String> {
    match compile(yaml) {
        Ok(_) => panic!("spec should be refused:\n{yaml}"),
        Err(e) => e.problems.iter().map(|p| format!("{}: {}", p.path, p.message)).collect(),
    }
}

fn assert_problem(yaml: &str, path: &str, fragment: &str) {
    let all = problems(yaml);
    assert!(
        all.iter().any(|p| p.starts_with(&format!("{path}: ")) && p.contains(fragment)),
        "expected a problem at `{path}` containing `{fragment}`, got:\n{}",
        all.join("\n")
    );
}

const RESERVATION: &str = r#"
name: reservation
topics: { orders: 4, adjustments: 4, orders-validated: 4 }
sources:
  orders: { topic: orders, value_format: json, to: [rekey] }
  adjustments: { topic: adjustments, to: [reserve] }
processors:
  rekey:
    component: r.wasm
    outputs: { by-product: orders-by-product }
  reserve:
    component: r.wasm
    stores: [stock]
    outputs: { validated: validated, rejected: [validated] }
repartitions:
  orders-by-product: { to: [reserve] }
stores:
  stock: {}
sinks:
  validated: { topic: orders-validated }
"#;

#[test]
fn repartition_edges_split_sub_topologies_upstream_first() {
    let t = compile(RESERVATION).unwrap();
    assert_eq!(t.subtopologies.len(), 2);
    let names =
        |s: usize| -> Vec<&str> { t.subtopologies[s].processors.iter().map(|p| t.nodes[*p].name.as_str()).collect() };
    assert_eq!(names(0), ["rekey"]);
    assert_eq!(names(1), ["reserve"]);
    let mut inputs: Vec<&str> = t.subtopologies[1].inputs.iter().map(|(topic, _)| topic.as_str()).collect();
    inputs.sort_unstable();
    assert_eq!(inputs, ["adjustments", "reservation-orders-by-product-repartition"]);
    // The repartition topic takes the partition count of its co-partitioned peer.
    assert_eq!(t.partitions_of("reservation-orders-by-product-repartition"), Some(4));
    assert_eq!(t.partitions_of("reservation-stock-changelog"), Some(4));
    assert_eq!(t.partitions_of("reservation-dlq"), Some(1));
    assert_eq!(t.dead_letter_topic, "reservation-dlq");
}

#[test]
fn co_partitioned_inputs_with_different_counts_are_refused_naming_topics_and_counts() {
    // Without an explicit count, the repartition topic follows its peer.
    let yaml = RESERVATION.replace("adjustments: 4", "adjustments: 3");
    let t = compile(&yaml).unwrap();
    assert_eq!(t.partitions_of("reservation-orders-by-product-repartition"), Some(3));
    // With a conflicting explicit count, deploy is refused.
    let yaml =
        yaml.replace("orders-by-product: { to: [reserve] }", "orders-by-product: { partitions: 4, to: [reserve] }");
    let all = problems(&yaml).join("\n");
    assert!(all.contains("co-partitioning"), "{all}");
    assert!(all.contains("adjustments has 3"), "{all}");
    assert!(all.contains("reservation-orders-by-product-repartition has 4"), "{all}");
}

#[test]
fn a_join_of_a_stream_and_a_table_needs_equal_partition_counts() {
    let yaml = r#"
name: join
topics: { orders: 4, customers: 3 }
sources:
  orders: { topic: orders, to: [join] }
tables:
  customers: { topic: customers }
processors:
  join: { component: j.wasm, stores: [customers], outputs: { out: out } }
sinks:
  out: { topic: enriched }
"#;
    assert_problem(yaml, "topics", "customers has 3");
    // With equal counts the table joins the processor's sub-topology.
    let t = compile(&yaml.replace("customers: 3", "customers: 4")).unwrap();
    assert_eq!(t.subtopologies.len(), 1);
    assert_eq!(t.subtopologies[0].inputs.len(), 2);
}

#[test]
fn global_tables_need_no_co_partitioning() {
    let yaml = r#"
name: g
topics: { orders: 4, products: 1 }
sources:
  orders: { topic: orders, to: [join] }
global_tables:
  products: { topic: products }
processors:
  join: { component: j.wasm, stores: [products], outputs: { out: out } }
sinks:
  out: { topic: enriched }
"#;
    let t = compile(yaml).unwrap();
    assert_eq!(t.subtopologies.len(), 1);
    assert_eq!(t.globals.len(), 1);
    let grant = &t.processor(t.node("join").unwrap()).unwrap().stores[0];
    assert!(!grant.writable, "global stores are read-only");
}

#[test]
fn unknown_references_name_the_field_and_the_choices() {
    let yaml = RESERVATION.replace("stores: [stock]", "stores: [stok]");
    assert_problem(&yaml, "processors.reserve.stores[0]", "unknown store `stok` (stores: stock)");
    let yaml = RESERVATION.replace("validated: validated,", "validated: nowhere,");
    assert_problem(&yaml, "processors.reserve.outputs.validated", "unknown target `nowhere`");
    let yaml = RESERVATION.replace("to: [rekey]", "to: [rekye]");
    assert_problem(&yaml, "sources.orders.to[0]", "unknown processor `rekye`");
}

#[test]
fn outputs_must_go_to_processors_sinks_or_repartitions() {
    let yaml = RESERVATION.replace("validated: validated,", "validated: orders,");
    assert_problem(&yaml, "processors.reserve.outputs.validated", "is a sources entry");
}

#[test]
fn cycles_between_processors_are_refused() {
    let yaml = r#"
name: cyc
sources:
  in: { topic: in, to: [a] }
processors:
  a: { component: x.wasm, outputs: { next: b } }
  b: { component: x.wasm, outputs: { back: a } }
"#;
    assert_problem(yaml, "processors", "cycle through a, b");
}

#[test]
fn a_store_belongs_to_one_processor() {
    let yaml = r#"
name: shared
sources:
  in: { topic: in, to: [a, b] }
processors:
  a: { component: x.wasm, stores: [s] }
  b: { component: x.wasm, stores: [s] }
stores:
  s: {}
"#;
    assert_problem(yaml, "stores.s", "used by processors a and b");
}

#[test]
fn unused_and_unreachable_elements_are_refused() {
    let yaml = r#"
name: loose
sources:
  in: { topic: in, to: [a] }
processors:
  a: { component: x.wasm }
  orphan: { component: x.wasm }
stores:
  unused: {}
sinks:
  never: { topic: never }
"#;
    let all = problems(yaml).join("\n");
    for want in
        ["processors.orphan: receives no records", "stores.unused: not used", "sinks.never: no processor output writes"]
    {
        assert!(all.contains(want), "missing `{want}` in:\n{all}");
    }
}

#[test]
fn names_are_unique_across_kinds_and_valid() {
    let yaml = r#"
name: "bad name"
sources:
  a: { topic: in, to: [a] }
processors:
  a: { component: x.wasm }
"#;
    let all = problems(yaml).join("\n");
    assert!(all.contains("name: `bad name` is not a valid application name"), "{all}");
    assert!(all.contains("processors.a: name already used in sources"), "{all}");
}

#[test]
fn a_topic_is_read_once() {
    let yaml = r#"
name: twice
sources:
  a: { topic: in, to: [p] }
  b: { topic: in, to: [p] }
processors:
  p: { component: x.wasm }
"#;
    assert_problem(yaml, "sources.b.topic", "already read by `a`");
}

#[test]
fn limits_are_parsed_and_checked() {
    let ok = RESERVATION.replace(
        "component: r.wasm\n    stores",
        "component: r.wasm\n    limits: { memory: 32MiB, call_timeout: 250ms }\n    max_batch: 10\n    stores",
    );
    let t = compile(&ok).unwrap();
    let def = t.processor(t.node("reserve").unwrap()).unwrap();
    assert_eq!(def.limits.memory_bytes, 32 << 20);
    assert_eq!(def.limits.call_timeout, Duration::from_millis(250));
    assert_eq!(def.max_batch, 10);
    let bad = RESERVATION.replace(
        "component: r.wasm\n    stores",
        "component: r.wasm\n    limits: { memory: lots, call_timeout: 1ms }\n    stores",
    );
    assert_problem(&bad, "processors.reserve.limits.memory", "not a size");
    assert_problem(&bad, "processors.reserve.limits.call_timeout", "at least 10ms");
}

#[test]
fn parse_errors_name_the_field_path() {
    let err = parse_spec("name: x\nprocessors:\n  p:\n    component: x.wasm\n    stroes: [s]\n").unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("processors.p"), "{text}");
    assert!(text.contains("unknown field `stroes`"), "{text}");
    let err = parse_spec(r#"{"name": "x", "processors": {"p": {"component": 3}}}"#).unwrap_err();
    assert!(err.to_string().starts_with("processors.p.component"), "{err}");
    let err = parse_spec("name: x\non_error: maybe\n").unwrap_err();
    assert!(err.to_string().contains("unknown field `on_error`"), "{err}");
}

#[test]
fn json_specs_work_like_yaml() {
    let yaml = compile(RESERVATION).unwrap();
    let spec: Spec = serde_yaml::from_str(RESERVATION).unwrap();
    let json = serde_json::to_string(&spec).unwrap();
    let from_json = compile(&json).unwrap();
    assert_eq!(yaml.partitions, from_json.partitions);
    assert_eq!(yaml.subtopologies.len(), from_json.subtopologies.len());
}

#[test]
fn sizes_and_durations() {
    assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
    assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
    assert_eq!(parse_size("4096").unwrap(), 4096);
    assert!(parse_size("12 parsecs").is_err());
    assert_eq!(parse_duration("100ms").unwrap(), Duration::from_millis(100));
    assert!(parse_duration("soon").is_err());
}

#[test]
fn specs_too_large_or_too_deeply_nested_are_refused_quickly() {
    // 200 KB of nested brackets: seconds in the YAML parser without the bound.
    let nested = format!("name: x\nconfig: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    let e = parse_spec(&nested).expect_err("too deep");
    assert!(e.to_string().contains("nested deeper than 32"), "{e}");
    let json = format!("{{\"name\": \"x\", \"c\": {}1{}}}", "[".repeat(50), "]".repeat(50));
    assert!(parse_spec(&json).expect_err("too deep").to_string().contains("nested deeper"));
    let big = format!("name: x\n# {}\n", "a".repeat(SPEC_MAX_BYTES));
    assert!(parse_spec(&big).expect_err("too big").to_string().contains("bytes; at most"));
    let indented = format!("name: x\ntopics:\n{}a: 1\n", " ".repeat(SPEC_MAX_INDENT + 1));
    assert!(parse_spec(&indented).expect_err("too wide").to_string().contains("indented more than"));
    // Nesting within the bound still parses.
    assert!(parse_spec(RESERVATION).is_ok());
}

#[test]
fn partition_counts_are_bounded() {
    let spec = RESERVATION.replace("orders: 4,", "orders: 100000,");
    assert_problem(&spec, "topics.orders", "more than weir allows (1024)");
    assert_problem(
        &format!("default_partitions: 4294967295\n{RESERVATION}"),
        "default_partitions",
        "more than weir allows",
    );
}

/// Property tests: whatever text or graph a caller sends, parsing and
/// validating answer `Ok` or a list of problems, never a panic, and a spec
/// that passes has bounded, co-partitioned sub-topologies. Failures are
/// kept by proptest in `proptest-regressions/` and replayed first.
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn pick(prefix: &'static str) -> impl Strategy<Value = String> {
        (0u8..3).prop_map(move |i| format!("{prefix}{i}"))
    }

    /// A spec over a few names per kind, wired at random: references may
    /// dangle, graphs may loop, counts may be zero or too large.
    fn spec_text() -> impl Strategy<Value = String> {
        let target = prop_oneof![pick("p"), pick("k"), pick("r"), pick("x")];
        (
            prop::collection::btree_map(pick("t"), prop_oneof![Just(0u32), 1u32..9, Just(1025), Just(u32::MAX)], 0..4),
            prop::collection::btree_map(pick("s"), (pick("t"), prop::collection::vec(target.clone(), 0..3)), 0..3),
            prop::collection::btree_map(
                pick("p"),
                (prop::collection::btree_map(pick("o"), target.clone(), 0..3), prop::collection::vec(pick("st"), 0..2)),
                0..4,
            ),
            prop::collection::btree_map(pick("k"), pick("t"), 0..3),
            prop::collection::btree_set(pick("st"), 0..3),
            prop::collection::btree_map(pick("r"), prop::collection::vec(target, 0..2), 0..2),
        )
            .prop_map(|(topics, sources, processors, sinks, stores, repartitions)| {
                let list = |v: &[String]| format!("[{}]", v.join(", "));
                let section = |name: &str, entries: Vec<String>| {
                    if entries.is_empty() {
                        format!("{name}: {{}}\n")
                    } else {
                        format!("{name}:\n{}", entries.iter().map(|e| format!("  {e}\n")).collect::<String>())
                    }
                };
                let mut y = String::from("name: prop\n");
                y += &section("topics", topics.iter().map(|(t, n)| format!("{t}: {n}")).collect());
                y += &section(
                    "sources",
                    sources.iter().map(|(s, (t, to))| format!("{s}: {{ topic: {t}, to: {} }}", list(to))).collect(),
                );
                y += &section(
                    "processors",
                    processors
                        .iter()
                        .map(|(p, (outputs, st))| {
                            let outs: Vec<String> = outputs.iter().map(|(o, t)| format!("{o}: {t}")).collect();
                            format!(
                                "{p}: {{ component: c.wasm, stores: {}, outputs: {{ {} }} }}",
                                list(st),
                                outs.join(", ")
                            )
                        })
                        .collect(),
                );
                y += &section("sinks", sinks.iter().map(|(k, t)| format!("{k}: {{ topic: {t} }}")).collect());
                y += &section("stores", stores.iter().map(|s| format!("{s}: {{}}")).collect());
                y += &section(
                    "repartitions",
                    repartitions.iter().map(|(r, to)| format!("{r}: {{ to: {} }}", list(to))).collect(),
                );
                y
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn any_text_is_parsed_or_refused_without_panicking(text in any::<String>()) {
            if let Ok(spec) = parse_spec(&text) {
                let _ = Topology::compile(spec);
            }
        }

        #[test]
        fn bracket_soup_is_parsed_or_refused_without_panicking(text in "[\\[\\]{}:, a-z0-9\n-]{0,300}") {
            if let Ok(spec) = parse_spec(&format!("name: x\n{text}")) {
                let _ = Topology::compile(spec);
            }
        }

        #[test]
        fn random_graphs_validate_to_bounded_co_partitioned_topologies(text in spec_text()) {
            let spec = parse_spec(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
            if let Ok(topology) = Topology::compile(spec) {
                for sub in &topology.subtopologies {
                    prop_assert!((1..=MAX_PARTITIONS).contains(&sub.partitions), "{text}");
                    for (topic, _) in &sub.inputs {
                        prop_assert_eq!(topology.partitions[topic], sub.partitions, "{}", text);
                    }
                }
                for n in topology.partitions.values() {
                    prop_assert!((1..=MAX_PARTITIONS).contains(n), "{text}");
                }
            }
        }
    }
}
