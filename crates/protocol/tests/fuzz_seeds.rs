//! Replays the fuzz seeds (`fuzz/seeds/<target>/`) and the crash inputs found and fixed
//! (`fuzz/regressions/<target>/`) through the fuzz targets' own checks, so that plain
//! `cargo test` on stable guards against regressions without nightly or cargo-fuzz.
//! See docs/fuzzing.md.

#[path = "../../../fuzz/src/checks.rs"]
mod checks;

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// Every file under `fuzz/<kind>/<target>/`, with its target's check.
fn inputs(kind: &str) -> Vec<(PathBuf, checks::Check)> {
    let root = fuzz_dir().join(kind);
    let mut out = Vec::new();
    let Ok(dirs) = std::fs::read_dir(&root) else {
        return out;
    };
    for dir in dirs {
        let dir = dir.expect("read dir entry").path();
        if !dir.is_dir() {
            continue;
        }
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let Some((_, check)) = checks::TARGETS.iter().find(|(t, _)| *t == name) else {
            panic!("{} names no fuzz target", dir.display());
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("read target dir")
            .map(|e| e.expect("read file entry").path())
            .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != ".gitkeep"))
            .collect();
        files.sort();
        out.extend(files.into_iter().map(|f| (f, *check)));
    }
    out
}

fn replay(kind: &str) -> usize {
    let inputs = inputs(kind);
    for (file, check) in &inputs {
        let bytes = std::fs::read(file).expect("read input");
        if std::panic::catch_unwind(|| check(&bytes)).is_err() {
            panic!("{} fails its fuzz check", file.display());
        }
    }
    inputs.len()
}

#[test]
fn every_target_has_seeds_and_they_pass() {
    for (target, _) in checks::TARGETS {
        let dir = fuzz_dir().join("seeds").join(target);
        let count = std::fs::read_dir(&dir).map_or(0, |d| d.count());
        assert!(count > 0, "no seeds in {}", dir.display());
    }
    assert!(replay("seeds") >= checks::TARGETS.len());
}

#[test]
fn fixed_crash_inputs_stay_fixed() {
    replay("regressions");
}
