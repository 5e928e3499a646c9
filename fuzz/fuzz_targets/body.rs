//! Whole request bodies as the collector takes them: plain, gzip or zstd (decompressed
//! with the collector's bounds), format given or sniffed, then parsed. The first byte
//! chooses; see `edgelog_fuzz::body`.
#![no_main]

use edgelog_fuzz::body;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| body(data));
