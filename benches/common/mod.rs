//! Shared by the criterion benches: the real sentences they run on.

use std::path::PathBuf;

use samp::tokenize::Input;

/// The first `n` VADER movie-review sentences (scripts/fetch_models.sh fetches them).
pub fn sentences(n: usize) -> Vec<Input> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let p = root.join("data/vader/movieReviewSnippets_GroundTruth.txt");
    let raw = std::fs::read(&p)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/fetch_models.sh)", p.display()));
    String::from_utf8_lossy(&raw)
        .lines()
        .filter_map(|l| l.splitn(3, '\t').nth(2))
        .map(|t| Input::from(t.trim()))
        .filter(|i| !i.first().is_empty())
        .take(n)
        .collect()
}
