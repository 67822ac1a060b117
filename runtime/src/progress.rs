//! Progress bars of long client work: producing a large file of records and
//! uploading a component. They are drawn on stderr only when stderr is a
//! terminal (indicatif's rule), so scripts and pipes see nothing but the
//! final summary line.

use std::io::{BufRead, BufReader, Read};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar over `total` bytes (a spinner counting bytes when the total is unknown).
pub fn bytes(total: Option<u64>, what: &str) -> ProgressBar {
    let bar = match total {
        Some(total) => ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr()).with_style(
            ProgressStyle::with_template("{msg} [{bar:24}] {bytes}/{total_bytes} eta {eta}")
                .expect("a valid template")
                .progress_chars("=> "),
        ),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(
            ProgressStyle::with_template("{spinner} {msg} {bytes} {bytes_per_sec}").expect("a valid template"),
        ),
    };
    bar.with_message(what.to_owned())
}

/// Standard input, counted by a bar: its size is known when it is
/// redirected from a file (`weir produce t < records.jsonl`).
pub fn stdin(what: &str) -> (ProgressBar, impl BufRead + use<>) {
    let size = std::fs::metadata("/proc/self/fd/0").ok().filter(|m| m.is_file()).map(|m| m.len());
    let bar = bytes(size, what);
    let reader = BufReader::with_capacity(1 << 16, bar.wrap_read(std::io::stdin().lock()));
    (bar, reader)
}

/// A reader over `body` that moves `bar` as the HTTP client sends it.
pub fn reading<'a>(bar: &ProgressBar, body: &'a [u8]) -> impl Read + 'a {
    bar.wrap_read(body)
}
