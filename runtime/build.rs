//! The web console's libraries (dagre for the topology's layout, uPlot for
//! the charts) come from npm, pinned by `console/package-lock.json`. This
//! script installs them with `npm ci` into the build's own output directory
//! (never into the source tree) and `src/api/console.rs` embeds their dist
//! files, so the binary serves the console with no network at run time.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The dist files the console embeds, relative to `node_modules`.
const ASSETS: [&str; 3] =
    ["@dagrejs/dagre/dist/dagre.min.js", "uplot/dist/uPlot.iife.min.js", "uplot/dist/uPlot.min.css"];

fn main() {
    println!("cargo:rerun-if-changed=console/package.json");
    println!("cargo:rerun-if-changed=console/package-lock.json");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("console");
    let installed = |root: &Path| ASSETS.iter().all(|a| root.join("node_modules").join(a).is_file());
    // The stamp is written only after `npm ci` succeeded: modules left by a
    // failed install, or installed from other package files, never count.
    let wanted = stamp();
    let stamp_file = out.join("installed.stamp");
    if !installed(&out) || std::fs::read(&stamp_file).ok().as_deref() != Some(&wanted[..]) {
        let _ = std::fs::remove_file(&stamp_file);
        let _ = std::fs::remove_dir_all(out.join("node_modules"));
        std::fs::create_dir_all(&out).expect("create OUT_DIR/console");
        for file in ["package.json", "package-lock.json"] {
            std::fs::copy(Path::new("console").join(file), out.join(file)).expect("copy the console's package files");
        }
        let npm = if cfg!(windows) { "npm.cmd" } else { "npm" };
        let status = Command::new(npm)
            .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"])
            .current_dir(&out)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => panic!(
                "`npm ci` for the web console's libraries failed ({s}) in {}: the console needs npm and the npm registry at build time (./dev installs Node.js)",
                out.display()
            ),
            Err(e) => panic!(
                "cannot run `npm` ({e}): the web console's libraries (runtime/console/package.json) are installed with npm at build time; install Node.js and npm (./dev does)"
            ),
        }
        assert!(installed(&out), "npm ci ran but the console's dist files are missing: {ASSETS:?}");
        std::fs::write(&stamp_file, &wanted).expect("write the install stamp");
    }
    for asset in ASSETS {
        let name = Path::new(asset).file_name().and_then(|n| n.to_str()).expect("asset names");
        println!("cargo:rustc-env=WEIR_CONSOLE_{}={}", env_name(name), out.join("node_modules").join(asset).display());
    }
}

/// What the installed modules must come from: both package files, as they are.
fn stamp() -> Vec<u8> {
    let mut stamp = Vec::new();
    for file in ["package.json", "package-lock.json"] {
        stamp.extend(std::fs::read(Path::new("console").join(file)).expect("the console's package files"));
        stamp.push(0);
    }
    stamp
}

/// `uPlot.min.css` → `UPLOT_MIN_CSS`.
fn env_name(file: &str) -> String {
    file.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect()
}
