//! The compiler: validates a [`Spec`] (collecting every problem with its
//! field path) and builds the [`Topology`]: nodes, stores and their
//! changelogs, the split into sub-topologies (a union-find over the edges
//! that keep nodes in one task), and the co-partitioning check.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::*;

/// What kind of element a name refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Source,
    Table,
    GlobalTable,
    Processor,
    Repartition,
    Sink,
}

impl Kind {
    fn section(self) -> &'static str {
        match self {
            Kind::Source => "sources",
            Kind::Table => "tables",
            Kind::GlobalTable => "global_tables",
            Kind::Processor => "processors",
            Kind::Repartition => "repartitions",
            Kind::Sink => "sinks",
        }
    }
}

struct UnionFind(Vec<usize>);

impl UnionFind {
    fn find(&mut self, x: usize) -> usize {
        let mut root = x;
        while self.0[root] != root {
            root = self.0[root];
        }
        let mut x = x;
        while self.0[x] != root {
            let next = self.0[x];
            self.0[x] = root;
            x = next;
        }
        root
    }
    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            self.0[ra.max(rb)] = ra.min(rb);
        }
    }
}

pub(super) struct Compiler<'a> {
    spec: Spec,
    actual: &'a BTreeMap<String, u32>,
    problems: Vec<Problem>,
}

impl<'a> Compiler<'a> {
    pub(super) fn new(spec: Spec, actual: &'a BTreeMap<String, u32>) -> Self {
        Compiler { spec, actual, problems: Vec::new() }
    }

    fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem { path: path.into(), message: message.into() });
    }

    fn check_timestamp(&mut self, timestamp: Option<&TimestampSpec>, path: String) {
        if let Some(t) = timestamp
            && (t.field.is_empty() || t.field.split('.').any(str::is_empty))
        {
            self.problem(format!("{path}.field"), format!("`{}` is not a field path like `ts` or `meta.ts`", t.field));
        }
    }

    pub(super) fn run(mut self) -> Result<Topology, SpecError> {
        let spec = self.spec.clone();
        let app = spec.name.clone();
        if !valid_name(&app) {
            self.problem("name", format!("`{app}` is not a valid application name (1-200 of a-z A-Z 0-9 . _ -)"));
        }

        // One namespace for every graph element.
        let mut kinds: BTreeMap<String, Kind> = BTreeMap::new();
        let sections: [(Kind, Vec<&String>); 6] = [
            (Kind::Source, spec.sources.keys().collect()),
            (Kind::Table, spec.tables.keys().collect()),
            (Kind::GlobalTable, spec.global_tables.keys().collect()),
            (Kind::Processor, spec.processors.keys().collect()),
            (Kind::Repartition, spec.repartitions.keys().collect()),
            (Kind::Sink, spec.sinks.keys().collect()),
        ];
        for (kind, names) in &sections {
            for name in names {
                if !valid_name(name) {
                    self.problem(
                        format!("{}.{name}", kind.section()),
                        "invalid name (1-200 of a-z A-Z 0-9 . _ -)".to_owned(),
                    );
                }
                if let Some(other) = kinds.insert((*name).clone(), *kind) {
                    self.problem(
                        format!("{}.{name}", kind.section()),
                        format!("name already used in {}; names are unique across sources, tables, global_tables, processors, repartitions and sinks", other.section()),
                    );
                }
            }
        }
        if spec.processors.is_empty() {
            self.problem("processors", "an application needs at least one processor");
        }
        if !self.problems.is_empty() {
            // Names are the basis of everything below.
            return Err(SpecError { problems: self.problems });
        }

        // Nodes: sources, tables, repartition readers, processors (sinks and
        // global tables are not nodes of a sub-topology).
        let mut nodes: Vec<Node> = Vec::new();
        let mut ids: HashMap<String, NodeId> = HashMap::new();
        let mut stores: Vec<StoreDef> = Vec::new();
        let mut store_ids: HashMap<String, StoreId> = HashMap::new();
        let mut topic_readers: BTreeMap<String, String> = BTreeMap::new();

        let mut read_topic = |this: &mut Self, topic: &str, path: String, reader: &str| {
            if topic.is_empty() || !valid_name(topic) {
                this.problem(format!("{path}.topic"), format!("`{topic}` is not a valid topic name"));
            }
            if let Some(other) = topic_readers.insert(topic.to_owned(), reader.to_owned()) {
                this.problem(
                    format!("{path}.topic"),
                    format!("topic `{topic}` is already read by `{other}`; read a topic once and fan out with `to:`"),
                );
            }
        };

        let max_task_idle = match spec.max_task_idle.as_deref().map(parse_duration) {
            None => Duration::ZERO,
            Some(Ok(d)) if d <= MAX_TASK_IDLE => d,
            Some(Ok(_)) => {
                self.problem("max_task_idle", format!("must be at most {MAX_TASK_IDLE:?}"));
                Duration::ZERO
            }
            Some(Err(e)) => {
                self.problem("max_task_idle", e);
                Duration::ZERO
            }
        };

        for (name, s) in &spec.sources {
            read_topic(&mut self, &s.topic, format!("sources.{name}"), name);
            self.check_timestamp(s.timestamp.as_ref(), format!("sources.{name}.timestamp"));
            ids.insert(name.clone(), nodes.len());
            nodes.push(Node {
                name: name.clone(),
                kind: NodeKind::Source(InputDef {
                    topic: s.topic.clone(),
                    key_format: s.key_format,
                    value_format: s.value_format,
                    on_error: s.on_error,
                    timestamp: s.timestamp.clone(),
                }),
                to: Vec::new(),
                subtopology: 0,
            });
        }
        for (name, t) in &spec.tables {
            read_topic(&mut self, &t.topic, format!("tables.{name}"), name);
            self.check_timestamp(t.timestamp.as_ref(), format!("tables.{name}.timestamp"));
            let store_name = t.store.clone().unwrap_or_else(|| name.clone());
            let node = nodes.len();
            let store = self.add_store(
                &mut stores,
                &mut store_ids,
                &store_name,
                StoreOwner::Table(node),
                format!("tables.{name}.store"),
            );
            ids.insert(name.clone(), node);
            nodes.push(Node {
                name: name.clone(),
                kind: NodeKind::Table {
                    input: InputDef {
                        topic: t.topic.clone(),
                        key_format: t.key_format,
                        value_format: t.value_format,
                        on_error: t.on_error,
                        timestamp: t.timestamp.clone(),
                    },
                    store,
                },
                to: Vec::new(),
                subtopology: 0,
            });
        }
        let mut globals = Vec::new();
        for (name, g) in &spec.global_tables {
            read_topic(&mut self, &g.topic, format!("global_tables.{name}"), name);
            let store_name = g.store.clone().unwrap_or_else(|| name.clone());
            let store = self.add_store(
                &mut stores,
                &mut store_ids,
                &store_name,
                StoreOwner::Global(globals.len()),
                format!("global_tables.{name}.store"),
            );
            globals.push(GlobalTableDef {
                name: name.clone(),
                input: InputDef {
                    topic: g.topic.clone(),
                    key_format: g.key_format,
                    value_format: g.value_format,
                    on_error: ErrorPolicy::Skip,
                    timestamp: None,
                },
                store,
            });
        }
        for name in spec.repartitions.keys() {
            let topic = format!("{app}-{name}-repartition");
            read_topic(&mut self, &topic, format!("repartitions.{name}"), name);
            ids.insert(name.clone(), nodes.len());
            nodes.push(Node {
                name: name.clone(),
                kind: NodeKind::Repartition { topic },
                to: Vec::new(),
                subtopology: 0,
            });
        }
        // Processors get node ids before their definitions so outputs can refer to any.
        let first_processor = nodes.len();
        for (i, name) in spec.processors.keys().enumerate() {
            ids.insert(name.clone(), first_processor + i);
        }
        // Processor-owned stores; ownership is checked below.
        let mut store_users: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for name in spec.stores.keys() {
            if !valid_name(name) {
                self.problem(format!("stores.{name}"), "invalid store name (1-200 of a-z A-Z 0-9 . _ -)");
            }
            store_users.insert(name.clone(), Vec::new());
        }

        // `to:` edges of sources, tables and repartitions.
        let mut edges: Vec<(NodeId, NodeId)> = Vec::new();
        let to_lists: Vec<(Kind, &String, &Vec<String>)> = spec
            .sources
            .iter()
            .map(|(n, s)| (Kind::Source, n, &s.to))
            .chain(spec.tables.iter().map(|(n, t)| (Kind::Table, n, &t.to)))
            .chain(spec.repartitions.iter().map(|(n, r)| (Kind::Repartition, n, &r.to)))
            .collect();
        for (kind, name, to) in to_lists {
            let from = ids[name];
            for (i, target) in to.iter().enumerate() {
                match kinds.get(target) {
                    Some(Kind::Processor) => {
                        let t = ids[target];
                        nodes[from].to.push(t);
                        edges.push((from, t));
                    }
                    Some(other) => self.problem(
                        format!("{}.{name}.to[{i}]", kind.section()),
                        format!("`{target}` is a {} entry, but `to:` lists processors", other.section()),
                    ),
                    None => {
                        let known = names_of(&kinds, Kind::Processor);
                        self.problem(
                            format!("{}.{name}.to[{i}]", kind.section()),
                            format!("unknown processor `{target}` (processors: {known})"),
                        );
                    }
                }
            }
            if to.is_empty() && kind != Kind::Table {
                self.problem(
                    format!("{}.{name}.to", kind.section()),
                    "sends its records nowhere: list at least one processor",
                );
            }
        }

        // Processors.
        let mut fed: BTreeSet<NodeId> = edges.iter().map(|(_, t)| *t).collect();
        let mut written_sinks: BTreeSet<String> = BTreeSet::new();
        let mut fed_repartitions: BTreeSet<String> = BTreeSet::new();
        let mut store_links: Vec<(NodeId, StoreId)> = Vec::new();
        let mut processor_defs = Vec::new();
        for (name, p) in &spec.processors {
            let id = ids[name];
            let path = format!("processors.{name}");
            if p.component.trim().is_empty() {
                self.problem(
                    format!("{path}.component"),
                    "missing component (a .wasm path or a registered name@version)",
                );
            }
            let mut grants = Vec::new();
            for (i, store) in p.stores.iter().enumerate() {
                if let Some(users) = store_users.get_mut(store) {
                    users.push(name.clone());
                    let sid =
                        self.add_store(&mut stores, &mut store_ids, store, StoreOwner::Processor(id), String::new());
                    grants.push(StoreGrant { name: store.clone(), store: sid, writable: true });
                    store_links.push((id, sid));
                } else if let Some(&sid) = store_ids.get(store) {
                    grants.push(StoreGrant { name: store.clone(), store: sid, writable: false });
                    if let StoreOwner::Table(_) = stores[sid].owner {
                        store_links.push((id, sid));
                    }
                } else {
                    let mut known: Vec<&str> = spec.stores.keys().map(String::as_str).collect();
                    known.extend(stores.iter().map(|s| s.name.as_str()));
                    known.sort_unstable();
                    known.dedup();
                    self.problem(
                        format!("{path}.stores[{i}]"),
                        format!(
                            "unknown store `{store}` (stores: {})",
                            if known.is_empty() { "none".into() } else { known.join(", ") }
                        ),
                    );
                }
            }
            let timers = p.timers.then(|| {
                let store = format!("{name}.timers");
                let sid = self.add_store(
                    &mut stores,
                    &mut store_ids,
                    &store,
                    StoreOwner::Processor(id),
                    format!("{path}.timers"),
                );
                store_links.push((id, sid));
                sid
            });
            let mut outputs = Vec::new();
            for (output, targets) in &p.outputs {
                if !valid_name(output) {
                    self.problem(
                        format!("{path}.outputs.{output}"),
                        "invalid output name (1-200 of a-z A-Z 0-9 . _ -)",
                    );
                }
                let mut resolved = Vec::new();
                for (i, target) in targets.names().iter().enumerate() {
                    let tpath = if targets.names().len() > 1 {
                        format!("{path}.outputs.{output}[{i}]")
                    } else {
                        format!("{path}.outputs.{output}")
                    };
                    match kinds.get(target) {
                        Some(Kind::Processor) => {
                            let t = ids[target];
                            edges.push((id, t));
                            fed.insert(t);
                            resolved.push(Target::Processor(t));
                        }
                        Some(Kind::Sink) => {
                            written_sinks.insert(target.clone());
                            resolved.push(Target::Topic { topic: spec.sinks[target].topic.clone(), internal: false });
                        }
                        Some(Kind::Repartition) => {
                            fed_repartitions.insert(target.clone());
                            resolved
                                .push(Target::Topic { topic: format!("{app}-{target}-repartition"), internal: true });
                        }
                        Some(other) => self.problem(
                            tpath,
                            format!(
                                "`{target}` is a {} entry; outputs go to processors, sinks or repartitions",
                                other.section()
                            ),
                        ),
                        None => self.problem(
                            tpath,
                            format!(
                                "unknown target `{target}` (processors: {}; sinks: {}; repartitions: {})",
                                names_of(&kinds, Kind::Processor),
                                names_of(&kinds, Kind::Sink),
                                names_of(&kinds, Kind::Repartition)
                            ),
                        ),
                    }
                }
                outputs.push(OutputDef { name: output.clone(), targets: resolved });
            }
            let memory_bytes = match &p.limits.memory {
                None => DEFAULT_MEMORY_LIMIT,
                Some(text) => match parse_size(text) {
                    Ok(n) if n >= 1 << 20 => n,
                    Ok(_) => {
                        self.problem(format!("{path}.limits.memory"), "must be at least 1MiB");
                        DEFAULT_MEMORY_LIMIT
                    }
                    Err(e) => {
                        self.problem(format!("{path}.limits.memory"), e);
                        DEFAULT_MEMORY_LIMIT
                    }
                },
            };
            let call_timeout = match &p.limits.call_timeout {
                None => DEFAULT_CALL_TIMEOUT,
                Some(text) => match parse_duration(text) {
                    Ok(d) if d >= Duration::from_millis(10) => d,
                    Ok(_) => {
                        self.problem(format!("{path}.limits.call_timeout"), "must be at least 10ms");
                        DEFAULT_CALL_TIMEOUT
                    }
                    Err(e) => {
                        self.problem(format!("{path}.limits.call_timeout"), e);
                        DEFAULT_CALL_TIMEOUT
                    }
                },
            };
            let max_batch = match p.max_batch {
                Some(0) => {
                    self.problem(format!("{path}.max_batch"), "must be at least 1");
                    1
                }
                Some(n) => n as usize,
                None => DEFAULT_MAX_BATCH as usize,
            };
            processor_defs.push(Node {
                name: name.clone(),
                kind: NodeKind::Processor(Box::new(ProcessorDef {
                    component: p.component.clone(),
                    config: p.config.iter().map(|(k, v)| (k.clone(), v.to_string())).collect(),
                    stores: grants,
                    outputs,
                    on_error: p.on_error,
                    limits: Limits { memory_bytes, call_timeout },
                    max_batch,
                    timers,
                })),
                to: Vec::new(),
                subtopology: 0,
            });
        }
        nodes.extend(processor_defs);
        for name in spec.processors.keys() {
            if !fed.contains(&ids[name]) {
                self.problem(
                    format!("processors.{name}"),
                    "receives no records: no source, table, repartition or processor output sends it any",
                );
            }
        }
        for (store, users) in &store_users {
            match users.len() {
                0 => self.problem(format!("stores.{store}"), "not used by any processor"),
                1 => {}
                _ => self.problem(
                    format!("stores.{store}"),
                    format!(
                        "used by processors {}; a store belongs to one processor (tables' stores may be read by many)",
                        users.join(" and ")
                    ),
                ),
            }
        }
        for name in spec.sinks.keys() {
            if !written_sinks.contains(name) {
                self.problem(format!("sinks.{name}"), "no processor output writes to it");
            }
            let topic = &spec.sinks[name].topic;
            if !valid_name(topic) {
                self.problem(format!("sinks.{name}.topic"), format!("`{topic}` is not a valid topic name"));
            }
            if topic_readers.contains_key(topic) {
                self.problem(format!("sinks.{name}.topic"), format!("topic `{topic}` is also an input of this application; use a repartition edge to feed records back"));
            }
        }
        for name in spec.repartitions.keys() {
            if !fed_repartitions.contains(name) {
                self.problem(format!("repartitions.{name}"), "no processor output writes to it");
            }
        }
        if !self.problems.is_empty() {
            return Err(SpecError { problems: self.problems });
        }

        // Sub-topologies: connected components over edges and table-store links.
        let mut uf = UnionFind((0..nodes.len()).collect());
        for (a, b) in &edges {
            uf.union(*a, *b);
        }
        for (p, sid) in &store_links {
            if let StoreOwner::Table(t) = stores[*sid].owner {
                uf.union(*p, t);
            }
        }
        let mut roots: Vec<usize> = Vec::new();
        for (id, node) in nodes.iter_mut().enumerate() {
            let root = uf.find(id);
            node.subtopology = match roots.iter().position(|r| *r == root) {
                Some(i) => i,
                None => {
                    roots.push(root);
                    roots.len() - 1
                }
            };
        }

        // Number sub-topologies upstream first (writers of a repartition topic
        // before its readers), as Kafka Streams does, so ids read in flow order.
        let sub_count = roots.len();
        let mut sub_edges: BTreeSet<(usize, usize)> = BTreeSet::new();
        for node in &nodes {
            if let NodeKind::Processor(p) = &node.kind {
                for o in &p.outputs {
                    for t in &o.targets {
                        if let Target::Topic { topic, internal: true } = t
                            && let Some(name) =
                                topic.strip_prefix(&format!("{app}-")).and_then(|t| t.strip_suffix("-repartition"))
                            && let Some(&reader) = ids.get(name)
                        {
                            let (from, to) = (node.subtopology, nodes[reader].subtopology);
                            if from != to {
                                sub_edges.insert((from, to));
                            }
                        }
                    }
                }
            }
        }
        let mut order: Vec<usize> = Vec::new();
        let mut placed = vec![false; sub_count];
        while order.len() < sub_count {
            let next = (0..sub_count)
                .find(|s| !placed[*s] && !sub_edges.iter().any(|(from, to)| to == s && !placed[*from] && from != s));
            // A cycle between sub-topologies keeps the remaining ones in discovery order
            // (it is reported when partition counts are resolved).
            let next = next.unwrap_or_else(|| (0..sub_count).find(|s| !placed[*s]).expect("one left"));
            placed[next] = true;
            order.push(next);
        }
        let renumber: Vec<usize> = {
            let mut r = vec![0; sub_count];
            for (new, old) in order.iter().enumerate() {
                r[*old] = new;
            }
            r
        };
        for node in &mut nodes {
            node.subtopology = renumber[node.subtopology];
        }

        // Topological order of processors within each sub-topology (Kahn), and cycles.
        let mut subtopologies: Vec<SubTopology> = (0..roots.len())
            .map(|id| SubTopology { id, partitions: 0, inputs: Vec::new(), processors: Vec::new(), stores: Vec::new() })
            .collect();
        let processor_ids: Vec<NodeId> = (first_processor..nodes.len()).collect();
        let mut indegree: HashMap<NodeId, usize> = processor_ids.iter().map(|p| (*p, 0)).collect();
        let proc_edges: Vec<(NodeId, NodeId)> = edges.iter().copied().filter(|(a, _)| *a >= first_processor).collect();
        for (_, b) in &proc_edges {
            *indegree.get_mut(b).expect("edge target is a processor") += 1;
        }
        let mut ready: Vec<NodeId> = processor_ids.iter().copied().filter(|p| indegree[p] == 0).collect();
        ready.reverse();
        let mut ordered = Vec::new();
        while let Some(p) = ready.pop() {
            ordered.push(p);
            for (_, b) in proc_edges.iter().filter(|(a, _)| *a == p) {
                let d = indegree.get_mut(b).expect("processor");
                *d -= 1;
                if *d == 0 {
                    ready.push(*b);
                }
            }
        }
        if ordered.len() < processor_ids.len() {
            let mut cyclic: Vec<&str> =
                processor_ids.iter().filter(|p| !ordered.contains(p)).map(|p| nodes[*p].name.as_str()).collect();
            cyclic.sort_unstable();
            return Err(SpecError::one(
                "processors",
                format!(
                    "processor outputs form a cycle through {}; break it with a repartition edge or a sink",
                    cyclic.join(", ")
                ),
            ));
        }
        for p in ordered {
            subtopologies[nodes[p].subtopology].processors.push(p);
        }
        for (sid, store) in stores.iter_mut().enumerate() {
            match store.owner {
                StoreOwner::Processor(n) | StoreOwner::Table(n) => {
                    let sub = nodes[n].subtopology;
                    store.subtopology = Some(sub);
                    store.changelog = Some(format!("{app}-{}-changelog", store.name));
                    subtopologies[sub].stores.push(sid);
                }
                StoreOwner::Global(_) => {}
            }
        }
        for (id, node) in nodes.iter().enumerate() {
            let topic = match &node.kind {
                NodeKind::Source(i) | NodeKind::Table { input: i, .. } => i.topic.clone(),
                NodeKind::Repartition { topic } => topic.clone(),
                NodeKind::Processor(_) => continue,
            };
            subtopologies[node.subtopology].inputs.push((topic, id));
        }

        // Partition counts and co-partitioning.
        let default_partitions = spec.default_partitions.unwrap_or(1).max(1);
        let declared = |topic: &str| -> Option<u32> {
            self.actual.get(topic).copied().or_else(|| spec.topics.get(topic).map(|t| t.partitions()))
        };
        let mut partitions: BTreeMap<String, u32> = BTreeMap::new();
        let mut problems = Vec::new();
        for (name, t) in &spec.topics {
            if t.partitions() == 0 {
                problems.push(Problem {
                    path: format!("topics.{name}"),
                    message: "a topic needs at least one partition".into(),
                });
            } else if t.partitions() > MAX_PARTITIONS {
                problems.push(Problem {
                    path: format!("topics.{name}"),
                    message: format!("{} partitions is more than weir allows ({MAX_PARTITIONS})", t.partitions()),
                });
            }
        }
        if spec.default_partitions.is_some_and(|n| n > MAX_PARTITIONS) {
            problems.push(Problem {
                path: "default_partitions".into(),
                message: format!("more than weir allows ({MAX_PARTITIONS})"),
            });
        }
        // Which sub-topology writes each repartition topic (upstream of its readers).
        let mut repartition_writers: HashMap<String, BTreeSet<usize>> = HashMap::new();
        for node in &nodes {
            if let NodeKind::Processor(p) = &node.kind {
                for o in &p.outputs {
                    for t in &o.targets {
                        if let Target::Topic { topic, internal: true } = t {
                            repartition_writers.entry(topic.clone()).or_default().insert(node.subtopology);
                        }
                    }
                }
            }
        }
        // Resolve sub-topologies in dependency order; a sub-topology fed only by
        // repartitions without explicit counts inherits its upstream's count.
        let mut resolved: Vec<Option<u32>> = vec![None; subtopologies.len()];
        for _round in 0..=subtopologies.len() {
            let mut progress = false;
            for sub in 0..subtopologies.len() {
                if resolved[sub].is_some() {
                    continue;
                }
                let mut known: Vec<(String, u32)> = Vec::new();
                let mut waiting = false;
                let mut inherited: Option<u32> = None;
                for (topic, node) in &subtopologies[sub].inputs {
                    let explicit = match &nodes[*node].kind {
                        NodeKind::Repartition { .. } => {
                            let name = &nodes[*node].name;
                            spec.repartitions[name].partitions.or_else(|| self.actual.get(topic).copied())
                        }
                        _ => Some(declared(topic).unwrap_or(default_partitions)),
                    };
                    match explicit {
                        Some(n) => known.push((topic.clone(), n)),
                        None => {
                            for up in repartition_writers.get(topic).into_iter().flatten() {
                                if *up == sub {
                                    continue;
                                }
                                match resolved[*up] {
                                    Some(n) => inherited = Some(inherited.map_or(n, |m: u32| m.max(n))),
                                    None => waiting = true,
                                }
                            }
                        }
                    }
                }
                let count = if let Some((_, first)) = known.first() {
                    if known.iter().any(|(_, n)| n != first) {
                        let procs: Vec<&str> =
                            subtopologies[sub].processors.iter().map(|p| nodes[*p].name.as_str()).collect();
                        let counts: Vec<String> = known.iter().map(|(t, n)| format!("{t} has {n}")).collect();
                        problems.push(Problem {
                            path: "topics".into(),
                            message: format!(
                                "co-partitioning: sub-topology {sub} (processors {}) reads topics with different partition counts: {}; they must all be equal, or records with the same key land in different tasks and joins silently miss",
                                procs.join(", "),
                                counts.join(", ")
                            ),
                        });
                    }
                    Some(*first)
                } else if waiting {
                    None
                } else {
                    Some(inherited.unwrap_or(default_partitions))
                };
                if let Some(n) = count {
                    resolved[sub] = Some(n);
                    progress = true;
                }
            }
            if !progress {
                break;
            }
        }
        if resolved.iter().any(Option::is_none) {
            problems.push(Problem {
                path: "repartitions".into(),
                message: "repartition edges form a cycle between sub-topologies; give the repartitions explicit partition counts or remove the cycle".into(),
            });
        }
        if !problems.is_empty() {
            return Err(SpecError { problems });
        }
        for (sub, count) in resolved.iter().enumerate() {
            let count = count.expect("checked above");
            subtopologies[sub].partitions = count;
            for (topic, _) in &subtopologies[sub].inputs {
                partitions.insert(topic.clone(), count);
            }
        }
        for g in &globals {
            partitions.insert(g.input.topic.clone(), declared(&g.input.topic).unwrap_or(default_partitions));
        }
        for s in spec.sinks.values() {
            partitions.insert(s.topic.clone(), declared(&s.topic).unwrap_or(default_partitions));
        }
        for store in &stores {
            if let (Some(changelog), Some(sub)) = (&store.changelog, store.subtopology) {
                partitions.insert(changelog.clone(), subtopologies[sub].partitions);
            }
        }
        let dead_letter_topic = format!("{app}-dlq");
        partitions.insert(dead_letter_topic.clone(), spec.dead_letter_partitions.unwrap_or(1).max(1));

        Ok(Topology {
            name: app,
            nodes,
            stores,
            subtopologies,
            globals,
            partitions,
            dead_letter_topic,
            partition_check: spec.partition_check,
            guarantee: spec.processing_guarantee,
            max_task_idle,
            spec,
        })
    }

    fn add_store(
        &mut self,
        stores: &mut Vec<StoreDef>,
        ids: &mut HashMap<String, StoreId>,
        name: &str,
        owner: StoreOwner,
        path: String,
    ) -> StoreId {
        if let Some(&id) = ids.get(name) {
            if stores[id].owner != owner && !path.is_empty() {
                self.problem(path, format!("store name `{name}` is already used"));
            }
            return id;
        }
        if !path.is_empty() && self.spec.stores.contains_key(name) {
            self.problem(path, format!("store name `{name}` is also declared under stores:"));
        }
        ids.insert(name.to_owned(), stores.len());
        let text = self.spec.stores.get(name).and_then(|s| s.retention.clone());
        let retention = text.and_then(|text| match parse_duration(&text) {
            Ok(d) if d.as_millis() > 0 => Some(d),
            Ok(_) => {
                self.problem(format!("stores.{name}.retention"), "must be at least 1ms");
                None
            }
            Err(e) => {
                self.problem(format!("stores.{name}.retention"), e);
                None
            }
        });
        stores.push(StoreDef { name: name.to_owned(), owner, changelog: None, subtopology: None, retention });
        stores.len() - 1
    }
}

fn names_of(kinds: &BTreeMap<String, Kind>, kind: Kind) -> String {
    let names: Vec<&str> = kinds.iter().filter(|(_, k)| **k == kind).map(|(n, _)| n.as_str()).collect();
    if names.is_empty() { "none".to_owned() } else { names.join(", ") }
}
