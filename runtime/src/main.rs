//! The `weir` command line. See `weir --help`.

fn main() -> std::process::ExitCode {
    weir::cli::main()
}
