//! Replays the committed fuzz corpus through every fuzz target on the stable toolchain, so
//! that a regression on any input the fuzzers ever kept fails `cargo test`.

use std::path::Path;

use signalr_relay_core::fuzzing::TARGETS;

#[test]
fn every_target_has_a_corpus_and_replays_it() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let mut total = 0;
    for (name, run) in TARGETS {
        let dir = corpus.join(name);
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        entries.sort();
        assert!(!entries.is_empty(), "{name} has no seed corpus");
        for path in entries {
            let data = std::fs::read(&path).unwrap();
            run(&data);
            total += 1;
        }
    }
    println!("replayed {total} corpus inputs");
}

#[test]
fn every_fuzz_target_binary_is_wired_to_a_body() {
    let targets = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/fuzz_targets");
    let mut files: Vec<String> = std::fs::read_dir(targets)
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    files.sort();
    let mut names: Vec<String> = TARGETS.iter().map(|(n, _)| (*n).to_owned()).collect();
    names.sort();
    assert_eq!(files, names);
}
