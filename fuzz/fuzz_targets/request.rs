//! Arbitrary bytes as a samp.v1 request: the pre-decode bound, prost's decode and the handlers'
//! validation must answer Ok or a client error, never panic, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use samp::config::Limits;
use samp::server::proto;
use samp::server::validate::{aggregation, check_count, check_text, truncation};
use samp::server::wire::checked_decode;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_inputs: 64,
        max_text_chars: 256,
        ..Limits::default()
    };
    samp::server::wire::raise_limits(&limits);
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            if let Ok(r) = checked_decode::<proto::EmbedRequest>(&mut &bytes[..]) {
                let _ = check_count(&limits, "inputs", r.texts.len());
                for (i, t) in r.texts.iter().enumerate() {
                    let _ = check_text(&limits, || format!("texts[{i}]"), t);
                }
                let _ = truncation(r.truncation);
            }
        }
        1 => {
            if let Ok(r) = checked_decode::<proto::ClassifyRequest>(&mut &bytes[..]) {
                use proto::classify_input::Input;
                let _ = check_count(&limits, "inputs", r.inputs.len());
                for (i, inp) in r.inputs.iter().enumerate() {
                    match &inp.input {
                        Some(Input::Text(t)) => {
                            let _ = check_text(&limits, || format!("inputs[{i}].text"), t);
                        }
                        Some(Input::Pair(p)) => {
                            let _ = check_text(&limits, || format!("inputs[{i}].pair.a"), &p.a);
                            let _ = check_text(&limits, || format!("inputs[{i}].pair.b"), &p.b);
                        }
                        None => {}
                    }
                }
            }
        }
        _ => {
            if let Ok(r) = checked_decode::<proto::TagRequest>(&mut &bytes[..]) {
                let _ = check_count(&limits, "inputs", r.texts.len());
                let _ = aggregation(r.aggregation);
                let _ = truncation(r.truncation);
            }
        }
    }
});
