//! Arbitrary bytes as texts through the tokenizer path the server uses (the real WordPiece
//! tokenizer of a committed fixture, truncation at 32 tokens, the long-text prefix cut): an
//! encoding or a clear error, never a panic; a kept prefix never exceeds the limit.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use samp::tokenize::{Input, Tokenizer, Truncation};

fn tokenizer() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/tiny-bert-multilabel");
        Tokenizer::load(&dir, 32, true).expect("the fixture's tokenizer loads")
    })
}

fuzz_target!(|data: &[u8]| {
    let t = tokenizer();
    let text = String::from_utf8_lossy(data).into_owned();
    if let Ok(e) = t.encode(&Input::Single(text.clone()), 0, Truncation::Truncate) {
        assert!(e.len() <= t.max_len());
    }
    let mid = text
        .char_indices()
        .nth(text.chars().count() / 2)
        .map_or(0, |(i, _)| i);
    let (a, b) = text.split_at(mid);
    if let Ok(e) = t.encode(&Input::Pair(a.into(), b.into()), 0, Truncation::Error) {
        assert!(!e.truncated && e.len() <= t.max_len());
    }
    // A limit of 32 tokens cuts texts past 8 × 32 characters to a prefix: make short inputs
    // long enough to take that path too.
    if !data.is_empty() && text.len() < 300 {
        let long = text.repeat(300 / text.len() + 1);
        if let Ok(e) = t.encode(&Input::Single(long), 0, Truncation::Truncate) {
            assert!(e.len() <= t.max_len());
        }
    }
});
