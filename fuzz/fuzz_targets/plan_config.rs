//! Arbitrary bytes as a precision plan (samp-plan.json), a model config.json and a server
//! config (samp.toml): parsed and validated into a value or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use samp::config::ServeConfig;
use samp::model::config::ModelConfig;
use samp::quant::plan::Plan;

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            if let Ok(p) = serde_json::from_slice::<Plan>(bytes) {
                let _ = p.validate(6);
                let _ = p.summary();
            }
        }
        1 => {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) {
                if let Ok(c) = ModelConfig::from_json(&v, std::path::Path::new("config.json")) {
                    let _ = c.position_limit();
                    let _ = c.head_dim();
                }
            }
        }
        _ => {
            if let Ok(text) = std::str::from_utf8(bytes) {
                if let Ok(mut c) = toml::from_str::<ServeConfig>(text) {
                    // validate() reads this file: never let the fuzzer name /dev/zero.
                    c.auth_token_file = None;
                    let _ = c.validate();
                }
            }
        }
    }
});
