//! Arbitrary bytes as an INT8 weight artifact (samp-int8.safetensors): the weights or an error
//! naming the file, never a panic, an overflow or an out-of-bounds slice.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("samp-int8.safetensors");
    if let Ok(tensors) = samp::quant::artifact::parse(data, path) {
        for q in tensors.values() {
            assert_eq!(q.scales.len(), q.n);
        }
    }
});
