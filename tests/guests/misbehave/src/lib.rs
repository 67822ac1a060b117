//! A processor that misbehaves on request, to prove the sandbox holds.
//!
//! Each record's value says what to do: `loop` spins forever, `alloc` grows
//! memory without bound, `panic` panics, `undeclared` emits to an output the
//! spec does not declare, bypassing the SDK's own check (`emit-nowhere` does
//! it through the SDK, which refuses it), `ungranted` reads a store the
//! spec does not grant, `fail` returns an
//! error, `print` writes to stdout and stderr; anything else is forwarded to
//! the output `out`; `short-entry`, `span-outside` and `truncated-write`
//! hand the host malformed packed lists (an emit entry cut short, a span
//! past the data, a write list to the store `scratch` cut inside an item).
//! Config `init=fail` makes `init` fail and `init=trap`
//! makes it panic. Config `stream_every` / `wall_every` (ms) schedule
//! punctuations, each of which emits `{"punctuation": kind, "at": timestamp}`.
//! Config `always=<value>` behaves on every record as if its value were that
//! (`always=panic`: a version that traps on everything); `trap_partition=N`
//! panics on every record of partition N (a version that traps on the one
//! instance owning it); `out=<name>` forwards to that output instead of `out`.

use weir_sdk::prelude::*;

#[derive(Default)]
pub struct Misbehave {
    always: Option<Vec<u8>>,
    trap_partition: Option<u32>,
    out: Option<String>,
}

impl Processor for Misbehave {
    fn init(&mut self, ctx: &mut Context, config: &Config) -> Result<()> {
        match config.get("init") {
            Some("fail") => bail!("init refused: configured to fail"),
            Some("trap") => panic!("init panicked: configured to trap"),
            _ => {}
        }
        self.always = config.get("always").map(|v| v.as_bytes().to_vec());
        self.trap_partition = config.parse::<u32>("trap_partition")?;
        self.out = config.get("out").map(str::to_owned);
        if let Some(ms) = config.parse::<u64>("stream_every")? {
            ctx.schedule(Punctuation::StreamTime, std::time::Duration::from_millis(ms))?;
        }
        if let Some(ms) = config.parse::<u64>("wall_every")? {
            ctx.schedule(Punctuation::WallClock, std::time::Duration::from_millis(ms))?;
        }
        Ok(())
    }

    fn punctuate(&mut self, ctx: &mut Context, kind: Punctuation, timestamp: i64) -> Result<()> {
        let kind = match kind {
            Punctuation::StreamTime => "stream-time",
            Punctuation::WallClock => "wall-clock",
        };
        ctx.emit("out", "tick", format!("{{\"punctuation\":\"{kind}\",\"at\":{timestamp}}}"))
    }

    fn process(&mut self, ctx: &mut Context, rec: Record) -> Result<()> {
        if self.trap_partition == Some(rec.partition()) {
            panic!("misbehave: trap on partition {}", rec.partition());
        }
        let out = self.out.as_deref().unwrap_or("out");
        let what = self.always.clone().unwrap_or_else(|| rec.value().unwrap_or_default().to_vec());
        match what.as_slice() {
            b"loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            b"alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            b"panic" => panic!("misbehave: panic requested by record"),
            b"fail" => bail!("misbehave: failure requested by record"),
            b"undeclared" => emit_undeclared(),
            b"short-entry" | b"span-outside" | b"truncated-write" => {
                send_malformed(rec.value().unwrap_or_default(), ctx)
            }
            b"emit-nowhere" => ctx.emit("nowhere", rec.key(), rec.value()),
            b"ungranted" => ctx.store::<String, String>("secret").get("x").map(|_| ()),
            b"print" => {
                println!("misbehave says hello on stdout");
                eprintln!("misbehave says hello on stderr");
                ctx.forward(out, &rec)
            }
            _ => ctx.forward(out, &rec),
        }
    }
}

#[cfg(target_arch = "wasm32")]
fn emit_undeclared() -> Result<()> {
    use weir_sdk::bindings::weir::processor0_3_0::packed;
    use weir_sdk::packed::OutputEntry;
    // Straight to the host with an output index the spec does not declare,
    // so the host's own check is what is tested.
    let mut records = Vec::new();
    OutputEntry {
        output: 99,
        key: None,
        value: Some((0, 1)),
        timestamp: 0,
        first_header: 0,
        header_count: 0,
        input_index: 0,
    }
    .write(&mut records);
    packed::emit(b"x", &records, &[]).map_err(|e| Error::msg(e.message))
}

/// Malformed packed lists, straight to the host: an emitted record's entry
/// cut short, a span past the data, a store write list cut inside an item.
#[cfg(target_arch = "wasm32")]
fn send_malformed(what: &[u8], ctx: &mut Context) -> Result<()> {
    use weir_sdk::bindings::weir::processor0_1_0::store;
    use weir_sdk::bindings::weir::processor0_3_0::packed;
    use weir_sdk::packed::OutputEntry;
    let mut entry = Vec::new();
    OutputEntry {
        output: 0,
        key: None,
        value: Some((0, 5)),
        timestamp: 0,
        first_header: 0,
        header_count: 0,
        input_index: 0,
    }
    .write(&mut entry);
    let _ = ctx;
    match what {
        b"short-entry" => packed::emit(b"hello", &entry[..30], &[]),
        b"span-outside" => packed::emit(b"hi", &entry, &[]),
        _ => {
            let s = store::Store::open("scratch").map_err(|e| Error::msg(e.message))?;
            // A key of 10 bytes with only 3 present.
            packed::write_many(&s, &[10, 0, 0, 0, b'a', b'b', b'c'])
        }
    }
    .map_err(|e| Error::msg(e.message))
}

#[cfg(not(target_arch = "wasm32"))]
fn emit_undeclared() -> Result<()> {
    bail!("undeclared output (native build)")
}

#[cfg(not(target_arch = "wasm32"))]
fn send_malformed(_: &[u8], _: &mut Context) -> Result<()> {
    bail!("malformed packed list (native build)")
}

export_processor!(Misbehave::default());
