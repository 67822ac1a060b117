//! The `weir` command line. See `weir --help`.

/// mimalloc instead of glibc's malloc: the host allocates per record
/// (record bytes read from the log, emitted records, store writes), and
/// glibc's consolidation of freed small chunks on every large request was
/// a visible share of a worker's time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    weir::cli::main()
}
